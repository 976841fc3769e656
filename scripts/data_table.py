from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.data import data_table_job

    data_table_job(snakemake.input.labels, snakemake.input.subsets, snakemake.output[0])
