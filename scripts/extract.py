from finescope import job

with job.logged(
    snakemake.log[0], threads=snakemake.threads, gpus=snakemake.config["resources"]["gpus"]
):
    from finescope.extract import extract_job
    from finescope.settings.extract import ExtractSettings

    splits = {
        split: ExtractSettings.build(settings)
        for split, settings in snakemake.params.settings.items()
    }
    extract_job(
        snakemake.wildcards.task,
        snakemake.input.model,
        {split: getattr(snakemake.input, split) for split in splits},
        {split: getattr(snakemake.output, split) for split in splits},
        splits,
    )
