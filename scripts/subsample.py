from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.subsample import subsample_job

    subsample_job(
        snakemake.wildcards.task,
        snakemake.input.train,
        int(snakemake.wildcards.fraction),
        int(snakemake.wildcards.seed),
        snakemake.output[0],
    )
