rule finetune:
    input:
        model="resources/models/{model}",
        data=expand("results/data/{{task}}/{split}.jsonl", split=SPLITS),
        labels="results/data/{task}/labels.json",
        subset="results/subsets/{task}/f{fraction}/s{seed}.json",
    output:
        # finetune.keep_model: false makes the weights temporary: Snakemake deletes them once
        # the model's extraction jobs are done (the study's grid: 88 GB of weights otherwise).
        model=(
            directory("results/finetune/{task}/{model}/f{fraction}/s{seed}/model")
            if config["finetune"]["keep_model"]
            else temp(
                directory("results/finetune/{task}/{model}/f{fraction}/s{seed}/model")
            )
        ),
        metrics="results/finetune/{task}/{model}/f{fraction}/s{seed}/metrics.json",
        curve="results/finetune/{task}/{model}/f{fraction}/s{seed}/curve.csv",
    log:
        "logs/finetune/{task}/{model}/f{fraction}/s{seed}.log",
    benchmark:
        "benchmarks/finetune/{task}/{model}/f{fraction}/s{seed}.tsv"
    wildcard_constraints:
        fraction=r"\d+",
    # Kept weights cost no extra disk when made early, so the longest chain (fine-tune ->
    # extract -> probe) starts first; temporary weights instead wait until the extractions
    # ahead of them (priority 5) have used up the previous ones.
    priority: 20 if config["finetune"]["keep_model"] else 0
    conda:
        "../envs/torch.yaml"
    # One thread: on 2 cores two 1-thread fine-tunings side by side train as fast as one on
    # 2 threads, and a 1-thread job never leaves a core idle waiting for a second one.
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=240,
    params:
        settings=finetune_settings,
        checkpoints="results/checkpoints/{task}/{model}/f{fraction}/s{seed}",
    script:
        "../scripts/finetune.py"
