"""Columns of the long tables that the stages write and the analysis reads: one list per table."""

# A grid point: the unit every measure belongs to.
GRID = ["task", "model", "fraction", "seed"]
# probing.csv rows (finescope.probe); features: the probe's input (e.g. cls_segments).
PROBING = [*GRID, "layer", "probe", "features", "measure", "value"]
# change.csv and attention rows (finescope.compare); head: an attention head, or "all".
CHANGE = [*GRID, "layer", "head", "measure", "value"]
