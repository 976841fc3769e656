from pathlib import Path

from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.figures(
        snakemake.input.measures,
        snakemake.input.correlations,
        Path(snakemake.output.png[0]).parent,
    )
