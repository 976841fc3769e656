from finescope import job

with job.logged(snakemake.log[0]):
    from finescope.analysis import tables_job

    tables_job(
        snakemake.input.metrics,
        snakemake.params.points,
        snakemake.input.probes,
        snakemake.input.changes,
        snakemake.input.facts,
        snakemake.params.models,
        snakemake.params.model_meta,
        snakemake.params.entity_f1,
        dict(snakemake.output.items()),
    )
