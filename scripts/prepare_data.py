from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.data import prepare_data_job
    from finescope.settings.probe_pool import ProbePoolSettings

    prepare_data_job(
        snakemake.wildcards.task,
        snakemake.params.data,
        snakemake.params.seed,
        ProbePoolSettings.build(snakemake.params.probe_pool),
        snakemake.output.labels,
    )
