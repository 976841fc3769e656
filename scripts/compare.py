from finescope import stages

with stages.logged(snakemake.log[0], threads=snakemake.threads):
    stages.compare(
        snakemake.input.pretrained,
        snakemake.input.finetuned,
        snakemake.params.point,
        snakemake.params.settings,
        snakemake.output[0],
    )
