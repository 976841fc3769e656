from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.correlations(snakemake.input[0], snakemake.params.settings, snakemake.output[0])
