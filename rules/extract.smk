# One job per grid point writes both caches: the model is imported and loaded once (for a
# small model most of an extraction's time). A setting of one split (attention_items,
# max_test_items) therefore re-extracts both caches of the points it changes.
rule extract:
    input:
        model=model_dir,
        probe="results/data/{task}/probe.jsonl",
        test="results/data/{task}/test.jsonl",
    output:
        probe=cache_dir("probe"),
        test=cache_dir("test"),
    log:
        "logs/extract/{task}/{model}/f{fraction}/s{seed}.log",
    benchmark:
        "benchmarks/extract/{task}/{model}/f{fraction}/s{seed}.tsv"
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
