from finescope import job

with job.logged(
    snakemake.log[0], threads=snakemake.threads, gpus=snakemake.config["resources"]["gpus"]
):
    from finescope.extract import extract_job

    extract_job(
        snakemake.wildcards.task,
        snakemake.input.model,
        snakemake.input.data,
        snakemake.output[0],
        snakemake.params.settings,
    )
