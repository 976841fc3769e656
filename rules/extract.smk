rule extract:
    input:
        model=model_dir,
        data="results/data/{task}/{split}.jsonl",
    # extract.keep: none makes caches temporary: Snakemake deletes each one once its last
    # consumer (probe, compare) has finished, so hidden states do not pile up on disk.
    output:
        (
            temp(directory("results/cache/{task}/{model}/f{fraction}/s{seed}/{split}"))
            if config["extract"]["keep"] == "none"
            else directory("results/cache/{task}/{model}/f{fraction}/s{seed}/{split}")
        ),
    log:
        "logs/extract/{task}/{model}/f{fraction}/s{seed}/{split}.log",
    benchmark:
        "benchmarks/extract/{task}/{model}/f{fraction}/s{seed}/{split}.tsv"
    # Before another fine-tuning job starts, so that temporary weights (finetune.keep_model:
    # false) and caches are used up in turn rather than piling up.
    priority: 5
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=120,
    params:
        settings=extract_settings,
    script:
        "../scripts/extract.py"
