rule prepare_model:
    output:
        model=directory("resources/models/{model}"),
        facts="resources/models/{model}.json",
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../envs/torch.yaml"
    params:
        ref=lambda wc: config["models"][wc.model]["ref"],
        trust_remote_code=lambda wc: config["models"][wc.model]["trust_remote_code"],
        revision=lambda wc: config["models"][wc.model].get("revision"),
    script:
        "../scripts/prepare_model.py"
