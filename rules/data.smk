from finescope.data import hub_data_dir


# Run by Snakemake itself, never submitted: the only data job that may use the network.
localrules:
    fetch_data,


rule fetch_data:
    output:
        directory(str(hub_data_dir("{task}"))),
    log:
        "logs/fetch_data/{task}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        data=lambda wc: config["tasks"][wc.task]["data"],
    script:
        "../scripts/fetch_data.py"


rule prepare_data:
    input:
        GRID.data_inputs,
    output:
        splits=expand("results/data/{{task}}/{split}.jsonl", split=SPLITS),
        pool="results/data/{task}/probe.jsonl",
        labels="results/data/{task}/labels.json",
    log:
        "logs/prepare_data/{task}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        data=lambda wc: config["tasks"][wc.task]["data"],
        seed=config["data_seed"],
        probe_pool=GRID.probe_pool_settings().to_params(),
    script:
        "../scripts/prepare_data.py"


rule subsample:
    input:
        train="results/data/{task}/train.jsonl",
    output:
        "results/subsets/{task}/f{fraction}/s{seed}.json",
    log:
        "logs/subsample/{task}/f{fraction}/s{seed}.log",
    # Only the trained fractions have a subset; "random" (the baseline) is extraction's alone.
    wildcard_constraints:
        fraction=r"\d+",
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/subsample.py"
