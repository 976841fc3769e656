from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.summary(
        snakemake.input.measures,
        snakemake.input.correlations,
        snakemake.params.grid,
        snakemake.output[0],
    )
