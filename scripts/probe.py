from finescope import stages

with stages.logged(snakemake.log[0], threads=snakemake.threads):
    stages.probe(
        snakemake.input.probe,
        snakemake.input.test,
        snakemake.input.pool,
        snakemake.input.test_items,
        snakemake.params.point,
        snakemake.params.settings,
        snakemake.output[0],
        n_jobs=snakemake.threads,
    )
