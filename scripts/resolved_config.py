from finescope import stages
from finescope.run import write_resolved_config

with stages.logged(snakemake.log[0]):
    write_resolved_config(snakemake.params.config, snakemake.output[0])
