from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.data_table(snakemake.input.labels, snakemake.input.subsets, snakemake.output[0])
