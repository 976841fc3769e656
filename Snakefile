from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/finetune.smk"
include: "rules/extract.smk"
include: "rules/probe.smk"
include: "rules/compare.smk"
include: "rules/analysis.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
