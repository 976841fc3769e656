from finescope import stages

with stages.logged(
    snakemake.log[0], threads=snakemake.threads, gpus=snakemake.config["resources"]["gpus"]
):
    stages.extract(
        snakemake.wildcards.task,
        snakemake.input.model,
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.settings,
    )
