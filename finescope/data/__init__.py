"""Read, validate and normalise the NLI and NER data into the canonical split files.

``prepare_task`` reads the sources named by one task's data config (synthetic, local files or a
Hugging Face dataset), checks every row, normalises NER tags to IOB2, derives missing splits
(seeded and stratified, recorded in ``labels.json``) and only then writes
``{train,dev,test}.jsonl`` and ``labels.json``, so a bad input leaves the output folder
untouched.
"""

from finescope.data.report import data_report, data_table_job
from finescope.data.sources import (
    FETCHED_FILE,
    PARQUET_BRANCH,
    fetch_data_job,
    fetch_hub_dataset,
    hub_data_dir,
    is_hub_dataset,
)
from finescope.data.splits import prepare_data_job, prepare_task

__all__ = [
    "FETCHED_FILE",
    "PARQUET_BRANCH",
    "data_report",
    "data_table_job",
    "fetch_data_job",
    "fetch_hub_dataset",
    "hub_data_dir",
    "is_hub_dataset",
    "prepare_data_job",
    "prepare_task",
]
