rule probe:
    input:
        probe="results/cache/{task}/{model}/f{fraction}/s{seed}/probe",
        test="results/cache/{task}/{model}/f{fraction}/s{seed}/test",
        pool="results/data/{task}/probe.jsonl",
        test_items="results/data/{task}/test.jsonl",
    output:
        "results/probe/{task}/{model}/f{fraction}/s{seed}.csv",
    log:
        "logs/probe/{task}/{model}/f{fraction}/s{seed}.log",
    benchmark:
        "benchmarks/probe/{task}/{model}/f{fraction}/s{seed}.tsv"
    # Consumers of caches before new extractions, so temporary caches are freed early.
    priority: 10
    conda:
        "../envs/torch.yaml"
    # One thread: two probe jobs side by side (or a probe beside an extraction) finish about
    # 1.4x sooner than one job that spreads its layers over two worker processes.
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=120,
    params:
        point=point,
        settings=probe_settings,
    script:
        "../scripts/probe.py"
