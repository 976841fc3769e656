from finescope import job

with job.logged(
    snakemake.log[0], threads=snakemake.threads, gpus=snakemake.config["resources"]["gpus"]
):
    from finescope.finetune import finetune_job
    from finescope.settings.finetune import FinetuneSettings

    finetune_job(
        snakemake.wildcards.task,
        {**dict(snakemake.wildcards.items()), "seed": int(snakemake.wildcards.seed)},
        snakemake.input.model,
        snakemake.input.labels,
        snakemake.input.subset,
        snakemake.output.model,
        snakemake.params.checkpoints,
        FinetuneSettings.build(snakemake.params.settings),
        # Read from the config, not params: turning tracking on re-runs no job.
        tracking=snakemake.config.get("tracking"),
    )
