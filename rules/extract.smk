rule extract:
    input:
        model=model_dir,
        data="results/data/{task}/{split}.jsonl",
    output:
        directory("results/cache/{task}/{model}/f{fraction}/s{seed}/{split}"),
    log:
        "logs/extract/{task}/{model}/f{fraction}/s{seed}/{split}.log",
    benchmark:
        "benchmarks/extract/{task}/{model}/f{fraction}/s{seed}/{split}.tsv"
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
