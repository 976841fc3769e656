from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.subsample(
        snakemake.wildcards.task,
        snakemake.input.train,
        int(snakemake.wildcards.fraction),
        int(snakemake.wildcards.seed),
        snakemake.output[0],
    )
