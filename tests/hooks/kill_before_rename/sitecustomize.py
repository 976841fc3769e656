"""Put on PYTHONPATH by the interruption tests: a job script (Snakemake runs it as
``python .snakemake/scripts/<tmp>.<name>.py``) dies by SIGKILL when an output whose path ends
with $KILL_BEFORE_RENAME is complete under its temporary name, just before the rename onto its
final path (a job killed at the worst moment). Other processes are untouched."""

import os
import signal
import sys

_SUFFIX = os.environ.get("KILL_BEFORE_RENAME", "")

if _SUFFIX and sys.argv and "/.snakemake/scripts/" in sys.argv[0]:
    _replace = os.replace

    def _killed_replace(src, dst, *args, **kwargs):
        if str(dst).endswith(_SUFFIX):
            os.kill(os.getpid(), signal.SIGKILL)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _killed_replace
