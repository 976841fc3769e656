from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.analysis import correlations_job

    correlations_job(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
