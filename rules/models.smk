rule prepare_model:
    output:
        model=directory("resources/models/{model}"),
        facts="resources/models/{model}.json",
    log:
        "logs/prepare_model/{model}.log",
    # Every model's chain (fine-tune -> extract -> probe) starts from here: prepare them all
    # first, so the slowest model's chain does not wait behind the other model's jobs.
    priority: 30
    conda:
        "../envs/torch.yaml"
    params:
        ref=lambda wc: config["models"][wc.model]["ref"],
        trust_remote_code=lambda wc: config["models"][wc.model]["trust_remote_code"],
        revision=lambda wc: config["models"][wc.model].get("revision"),
    script:
        "../scripts/prepare_model.py"
