from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from finescope.figures import FIGURES
from finescope.workflow import (
    TABLES,
    Grid,
    check_config,
    check_config_files,
    schema_error,
)

# Before validation: the loaded config has already lost a repeated key. (Snakemake reads a
# --configfile before the workflow starts and stops on a file it cannot read without naming it.)
check_config_files(workflow.configfiles)
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as exc:
    error = schema_error(exc, workflow.configfiles)
    if error is None:
        raise
    raise error from None
check_config(config, workflow.configfiles)

GRID = Grid.from_config(config)
TASKS = GRID.tasks
MODELS = GRID.models
SPLITS = ["train", "dev", "test"]
PROBE_SPLIT = "probe"
# The caches of a grid point: the probe pool and the test split.
CACHE_SPLITS = [PROBE_SPLIT, "test"]


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),
    fraction=r"\d+|random",
    seed=r"\d+",


localrules:
    prepare_model,


def final_outputs():
    return (
        expand("results/tables/{table}.csv", table=TABLES)
        + ["results/tables/measures.parquet", "results/summary.md"]
        + expand("results/figures/{figure}.{ext}", figure=FIGURES, ext=["png", "svg"])
    )


def model_dir(wildcards):
    """Fraction 0 and the random baseline start from the pre-trained folder; others are trained."""
    if wildcards.fraction in ("0", "random"):
        return f"resources/models/{wildcards.model}"
    return "results/finetune/{task}/{model}/f{fraction}/s{seed}/model".format(
        **wildcards
    )


# Each job's typed settings are built (and checked) here, while the DAG is planned, and
# reach the job as plain values (to_params): Snakemake re-runs a job whose params change only
# for params of builtin types. The script builds the same object from them.
def finetune_settings(wildcards):
    return GRID.finetune_settings(wildcards.model, int(wildcards.seed)).to_params()


def cache_dir(split):
    """One cache folder of a grid point; extract.keep: none makes it temporary: Snakemake
    deletes it once its last consumer (probe, compare, figures) has finished, so hidden states
    do not pile up on disk."""
    path = directory(
        f"results/cache/{{task}}/{{model}}/f{{fraction}}/s{{seed}}/{split}"
    )
    return temp(path) if config["extract"]["keep"] == "none" else path


def extract_settings(wildcards):
    """Settings of each cache an extraction job writes, by split."""
    return {
        split: GRID.extract_settings(
            wildcards.model,
            split,
            random_init=wildcards.fraction == "random",
            task=wildcards.task,
        ).to_params()
        for split in CACHE_SPLITS
    }


def probe_settings(wildcards):
    return GRID.probe_settings(wildcards.task).to_params()


def point(wildcards):
    return {
        "task": wildcards.task,
        "model": wildcards.model,
        "fraction": wildcards.fraction,
        "seed": int(wildcards.seed),
    }


def grid_paths(pattern, points):
    """``pattern`` formatted for every task × model × (fraction, seed) point."""
    return [
        pattern.format(task=t, model=m, fraction=f, seed=s)
        for t in TASKS
        for m in MODELS
        for f, s in points
    ]


def grid_points(points):
    """The grid points of ``grid_paths(pattern, points)``, in the same order (jobs get their
    points from here, never from the paths)."""
    return [
        {"task": t, "model": m, "fraction": str(f), "seed": int(s)}
        for t in TASKS
        for m in MODELS
        for f, s in points
    ]


METRICS = grid_paths(
    "results/finetune/{task}/{model}/f{fraction}/s{seed}/metrics.json",
    GRID.training_points(),
)
PROBES = grid_paths(
    "results/probe/{task}/{model}/f{fraction}/s{seed}.csv", GRID.internal_points()
)
TRAINING_POINTS = grid_points(GRID.training_points())
CHANGES = grid_paths(
    "results/change/{task}/{model}/f{fraction}/s{seed}.csv", GRID.training_points()
)
SUBSETS = [
    f"results/subsets/{t}/f{f}/s{s}.json"
    for t in TASKS
    for f, s in GRID.training_points()
]
