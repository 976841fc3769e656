from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.summary import summary_job

    summary_job(
        snakemake.input.measures,
        snakemake.input.correlations,
        snakemake.params.grid,
        snakemake.output[0],
    )
