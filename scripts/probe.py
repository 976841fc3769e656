from finescope import job

with job.logged(snakemake.log[0], threads=snakemake.threads):
    from finescope.probe import probe_job
    from finescope.settings.probe import ProbeSettings

    probe_job(
        snakemake.input.probe,
        snakemake.input.test,
        snakemake.input.pool,
        snakemake.input.test_items,
        snakemake.params.point,
        ProbeSettings.build(snakemake.params.settings),
        snakemake.output[0],
        n_jobs=snakemake.threads,
    )
