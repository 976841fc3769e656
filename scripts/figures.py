from pathlib import Path

from finescope import job
from finescope.run import write_resolved_config

with job.logged(snakemake.log[0], threads=snakemake.threads):
    from finescope.figures import figures_job

    figures_job(
        snakemake.input.measures,
        snakemake.input.correlations,
        Path(snakemake.output.png[0]).parent,
        curve_paths=snakemake.input.curves,
        metrics_paths=snakemake.input.metrics,
        points=snakemake.params.points,
        attention_pairs=list(
            zip(snakemake.input.pre_caches, snakemake.input.ft_caches, strict=True)
        ),
        attention_points=snakemake.params.attention_points,
        # Read from the config, not params: turning tracking on re-runs no job.
        tracking=snakemake.config.get("tracking"),
        grid=snakemake.params.grid,
        n_jobs=snakemake.threads,
    )
    write_resolved_config(snakemake.params.config, snakemake.output.config)
