from pathlib import Path

from finescope import io, stages

# Each model's facts file records the revision (hub commit) that was loaded.
revisions = {Path(p).stem: io.read_json(p).get("revision") for p in snakemake.input.facts}
model_meta = {
    name: {**meta, "revision": revisions.get(name)}
    for name, meta in snakemake.params.model_meta.items()
}
with stages.logged(snakemake.log[0]):
    stages.tables(
        snakemake.input.metrics,
        snakemake.params.points,
        snakemake.input.probes,
        snakemake.input.changes,
        snakemake.input.facts,
        model_meta,
        snakemake.params.entity_f1,
        dict(snakemake.output.items()),
    )
