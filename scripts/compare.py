from finescope import job

with job.logged(snakemake.log[0], threads=snakemake.threads):
    from finescope.compare import compare_job
    from finescope.settings.compare import CompareSettings

    compare_job(
        snakemake.input.pretrained,
        snakemake.input.finetuned,
        snakemake.params.point,
        CompareSettings.build(snakemake.params.settings),
        snakemake.output[0],
    )
