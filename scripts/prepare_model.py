from finescope import stages

with stages.logged(snakemake.log[0], offline=False):
    stages.prepare_model(
        snakemake.params.ref,
        snakemake.output.model,
        snakemake.output.facts,
        snakemake.params.trust_remote_code,
    )
