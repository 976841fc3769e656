from finescope import stages

# A local job: it runs where Snakemake runs (the login node), with network.
with stages.logged(snakemake.log[0], offline=False):
    stages.fetch_data(snakemake.wildcards.task, snakemake.params.data, snakemake.output[0])
