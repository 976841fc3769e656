from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.prepare_data(
        snakemake.wildcards.task,
        snakemake.params.data,
        snakemake.params.seed,
        snakemake.params.probe_pool,
        snakemake.output.labels,
    )
