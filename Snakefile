from snakemake.utils import min_version

min_version("9.0")


# A --configfile given on the command line replaces the default instead of merging into it.
if not workflow.overwrite_configfiles:
    # Checked before loading, so a YAML error or an empty file is reported with file and line.
    from finescope.workflow import check_config_files

    check_config_files(["config.yaml"])

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
    default_target: True
    input:
        final_outputs(),


# The number of warnings the jobs raised (listed in results/summary.md) after the run.
onsuccess:
    from finescope.job_warnings import print_count

    print_count(GRID.description())


onerror:
    from finescope.job_warnings import print_count

    print_count(GRID.description(), summary=None)
