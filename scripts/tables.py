from finescope import stages

with stages.logged(snakemake.log[0]):
    stages.tables(
        snakemake.input.metrics,
        snakemake.input.probes,
        snakemake.input.changes,
        snakemake.input.facts,
        snakemake.params.model_meta,
        snakemake.params.entity_f1,
        dict(snakemake.output.items()),
    )
