"""Names the probe modules share: the table columns, the cache views they read, the logger."""

from __future__ import annotations

import logging

from finescope import columns

log = logging.getLogger("finescope.probe")

COLUMNS = columns.PROBING
NLI_VIEWS = ("premise", "hypothesis")
NLI_LAYOUTS = ("pair", "separate")
NER_VIEW = "word"
NER_OUTSIDE = "O"
