from finescope import stages

with stages.logged(
    snakemake.log[0], threads=snakemake.threads, gpus=snakemake.config["resources"]["gpus"]
):
    stages.finetune(
        snakemake.wildcards.task,
        {**dict(snakemake.wildcards.items()), "seed": int(snakemake.wildcards.seed)},
        snakemake.input.model,
        snakemake.input.labels,
        snakemake.input.subset,
        snakemake.output.model,
        snakemake.params.checkpoints,
        snakemake.params.settings,
        # Read from the config, not params: turning tracking on re-runs no job.
        tracking=snakemake.config.get("tracking"),
    )
