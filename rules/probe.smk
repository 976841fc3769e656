rule probe:
    input:
        train="results/cache/{task}/{model}/f{fraction}/s{seed}/train",
        test="results/cache/{task}/{model}/f{fraction}/s{seed}/test",
    output:
        "results/probe/{task}/{model}/f{fraction}/s{seed}.csv",
    log:
        "logs/probe/{task}/{model}/f{fraction}/s{seed}.log",
    benchmark:
        "benchmarks/probe/{task}/{model}/f{fraction}/s{seed}.tsv"
    params:
        point=point,
        settings=probe_settings,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/probe.py"
