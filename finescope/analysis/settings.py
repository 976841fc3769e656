"""Analysis settings from the schema, the table columns and the words used in notes."""

from __future__ import annotations

from finescope import columns
from finescope.settings.analysis import AnalysisSettings

RANDOM = "random"
SOURCES = ("downstream", "probing", "change")
SCOPES = ("within_model", "pooled", "raw")
DEFAULT_SCOPES = ("within_model", "pooled")
# Scopes whose tests are inferential: BH families and findings come only from these.
TESTED_SCOPES = ("within_model", "pooled")
METHODS = ("spearman", "pearson")
AGGREGATES = (
    "best_layer",
    "best_layer_depth",
    "most_changed",
    "most_changed_depth",
    "mean",
    "last",
)
# Measures where a smaller value means the layer encodes more (MDL code length in bits).
LOWER_IS_BETTER = frozenset({"codelength"})
DEV_PREFIX = "dev_"
# Probe bookkeeping, never correlated.
NOT_CORRELATED = frozenset({"chosen_C"})
# Which extreme of a change measure marks the layer fine-tuning moved most.
CHANGE_DIRECTION = {
    "attention_cosine": "min",
    "cka": "min",
    "cka_debiased": "min",
    "attention_js": "max",
    "attention_entropy_change": "absmax",
}
MIN_N = AnalysisSettings.min_n
DEPTH_BINS = AnalysisSettings.depth_bins
N_BOOT = AnalysisSettings.n_boot
N_PERM = 2000
# Up to this many within-cell arrangements the permutation p-value is exact.
EXACT_LIMIT = 10_000

CONTROLS = {
    "within_model": "fraction level (centred)",
    "pooled": "model × fraction cell (centred)",
    "raw": "none",
}
UNITS = {
    "within_model": "seed within fraction level",
    "pooled": "seed within model × fraction cell",
    "raw": "grid point",
}
_CELLS_WORDS = {
    "within_model": "within fraction levels",
    "pooled": "within model × fraction cells",
    "raw": "across all grid points",
}

GRID = columns.GRID
FEATURE = ["measure_source", "probe", "measure", "layer"]

DOWNSTREAM_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "fraction",
    "seed",
    "primary",
    "score_metric",
    "measure",
    "value",
]
ENTITY_F1 = {"strict": "f1", "conlleval": "f1_conlleval"}
TIDY_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "model_revision",
    "fraction",
    "seed",
    "layer",
    "relative_depth",
    "head",
    "source",
    "probe",
    "measure",
    "value",
]
# The probe input (features) is a setting of the probe job, not part of a measure's key.
PROBING_COLUMNS = [c for c in columns.PROBING if c != "features"]
CHANGE_COLUMNS = columns.CHANGE
FEATURE_COLUMNS = [*GRID, "family", "domain", *FEATURE, "relative_depth", "x", "score"]
CORRELATION_COLUMNS = [
    "task",
    "scope",
    "family",
    "model",
    "measure_source",
    "probe",
    "measure",
    "layer",
    "depth",
    "method",
    "coefficient",
    "p_value",
    "ci_low",
    "ci_high",
    "q_value",
    "n",
    "n_clusters",
    "df",
    "underpowered",
    "controls",
    "unit",
    "p_method",
    "ci_method",
    "note",
]

NOTE_FEW = "too few points"
NOTE_CONSTANT = "constant input"
NOTE_CONSTANT_CELLS = "constant within cells"
NOTE_NO_REPLICATES = "no cell with 2 or more seeds"
