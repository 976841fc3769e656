CURVES = [m.replace("metrics.json", "curve.csv") for m in METRICS]
# The attention example: pre-trained vs the largest fraction's first seed, per task x model.
ATTENTION_POINTS = (
    [
        {"task": t, "model": m, "fraction": str(max(GRID.trained_fractions))}
        for t in TASKS
        for m in MODELS
    ]
    if GRID.trained_fractions
    else []
)
ATTENTION_EXAMPLES = [
    (
        f"results/cache/{p['task']}/{p['model']}/f0/s0/test",
        f"results/cache/{p['task']}/{p['model']}/f{p['fraction']}/s{GRID.seeds[0]}/test",
    )
    for p in ATTENTION_POINTS
]


rule data_table:
    input:
        labels=expand("results/data/{task}/labels.json", task=TASKS),
        pools=expand("results/data/{task}/probe.jsonl", task=TASKS),
        subsets=SUBSETS,
    output:
        report(
            "results/tables/data.csv",
            caption="../report/data.rst",
            category="Tables",
        ),
    log:
        "logs/analysis/data_table.log",
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/data_table.py"


rule tables:
    input:
        metrics=METRICS,
        probes=PROBES,
        changes=CHANGES,
        facts=expand("resources/models/{model}.json", model=MODELS),
    output:
        downstream=report(
            "results/tables/downstream.csv",
            caption="../report/downstream_table.rst",
            category="Tables",
        ),
        probing=report(
            "results/tables/probing.csv",
            caption="../report/probing_table.rst",
            category="Tables",
        ),
        change=report(
            "results/tables/change.csv",
            caption="../report/change_table.rst",
            category="Tables",
        ),
        attention="results/tables/attention.csv",
        measures="results/tables/measures.csv",
        parquet="results/tables/measures.parquet",
    log:
        "logs/analysis/tables.log",
    conda:
        "../envs/analysis.yaml"
    params:
        points=TRAINING_POINTS,
        models=MODELS,
        model_meta=GRID.model_meta(),
        entity_f1=GRID.analysis_settings().entity_f1,
    script:
        "../scripts/tables.py"


rule correlations:
    input:
        "results/tables/measures.parquet",
    output:
        report(
            "results/tables/correlations.csv",
            caption="../report/correlations_table.rst",
            category="Tables",
        ),
    log:
        "logs/analysis/correlations.log",
    conda:
        "../envs/analysis.yaml"
    params:
        settings=GRID.analysis_settings().to_params(),
    script:
        "../scripts/correlations.py"


rule figures:
    input:
        measures="results/tables/measures.parquet",
        correlations="results/tables/correlations.csv",
        curves=CURVES,
        metrics=METRICS,
        pre_caches=[pre for pre, _ in ATTENTION_EXAMPLES],
        ft_caches=[ft for _, ft in ATTENTION_EXAMPLES],
    output:
        png=[
            report(
                f"results/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
        ],
        svg=expand("results/figures/{name}.svg", name=FIGURES),
        # The config as the run resolved it, for finescope.load_run; the figures already
        # depend on every stage, and the whole config as a param rewrites it on any change.
        config="results/config.resolved.yaml",
    log:
        "logs/analysis/figures.log",
    conda:
        "../envs/analysis.yaml"
    # Figures are drawn side by side, one per thread (matplotlib is most of this job).
    threads: 2
    params:
        points=TRAINING_POINTS,
        attention_points=ATTENTION_POINTS,
        grid=GRID.description(),
        config=config,
    script:
        "../scripts/figures.py"


rule summary:
    input:
        measures="results/tables/measures.parquet",
        correlations="results/tables/correlations.csv",
    output:
        report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/analysis/summary.log",
    conda:
        "../envs/analysis.yaml"
    params:
        grid=GRID.description(),
    script:
        "../scripts/summary.py"
