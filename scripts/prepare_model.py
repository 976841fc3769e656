import logging

from finescope import job, models

with job.logged(snakemake.log[0], offline=False):
    facts = models.prepare_model(
        snakemake.wildcards.model,
        snakemake.params.ref,
        snakemake.output.model,
        snakemake.output.facts,
        snakemake.params.trust_remote_code,
        snakemake.params.revision,
    )
    logging.getLogger("finescope").info("materialised %s: %s", snakemake.params.ref, facts)
