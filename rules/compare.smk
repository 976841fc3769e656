rule compare:
    input:
        pretrained="results/cache/{task}/{model}/f0/s0/test",
        finetuned="results/cache/{task}/{model}/f{fraction}/s{seed}/test",
    output:
        "results/change/{task}/{model}/f{fraction}/s{seed}.csv",
    log:
        "logs/compare/{task}/{model}/f{fraction}/s{seed}.log",
    benchmark:
        "benchmarks/compare/{task}/{model}/f{fraction}/s{seed}.tsv"
    # Consumers of caches before new extractions, so temporary caches are freed early.
    priority: 10
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=60,
    params:
        point=point,
        settings=GRID.compare_settings().to_params(),
    script:
        "../scripts/compare.py"
