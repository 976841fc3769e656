from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.analysis import correlations_job
    from finescope.settings.analysis import AnalysisSettings

    correlations_job(
        snakemake.input[0],
        AnalysisSettings.build(snakemake.params.settings),
        snakemake.output[0],
    )
