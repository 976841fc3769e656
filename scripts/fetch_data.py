from finescope import job

# A local job: it runs where Snakemake runs (the login node), with network.
with job.logged(snakemake.log[0], offline=False):
    from finescope.data import fetch_data_job

    fetch_data_job(snakemake.wildcards.task, snakemake.params.data, snakemake.output[0])
