from finescope import stages

with stages.logged(snakemake.log[0], threads=snakemake.threads):
    stages.probe(
        snakemake.input.train,
        snakemake.input.test,
        snakemake.params.point,
        snakemake.params.settings,
        snakemake.output[0],
        n_jobs=snakemake.threads,
    )
