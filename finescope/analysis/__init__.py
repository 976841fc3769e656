"""Tidy every measure of the study into one long table and correlate the downstream score with
what the layers encode (probe scores) and how far fine-tuning moved them (change measures).

Vocabulary
----------
grid point
    One (task, model, fraction, seed). Only fine-tuned grid points (fraction > 0) have a
    downstream score, so only they enter the correlations.
cell
    The grid points of one model at one fraction: the seeds are its replicates.
fraction
    In the tidy table ``fraction`` is a string: the percent of training data as a decimal
    integer ("0" = pre-trained, "10", ..., "100") or ``"random"`` for the random-weights
    baseline. It is a string because the baseline shares the column with the numbers and a
    mixed column cannot be written to parquet. The downstream tables keep integer fractions
    (they never hold the baseline). The baseline stays in the tidy table and the figures and is
    left out of every correlation.
feature
    One internal measure at one layer, or one aggregate over layers per grid point
    (``AGGREGATES``):

    ``best_layer`` (probe measures)
        The TEST value at the layer whose probe-DEV score (the ``dev_<measure>`` row of the
        same probe) is best: highest, or lowest for ``LOWER_IS_BETTER`` (code length); ties go
        to the shallower layer. Without dev rows for a measure there is no ``best_layer`` row:
        the layer is never chosen on the test split.
    ``best_layer_depth``
        Relative depth (0 = embeddings, 1 = last layer) of that layer.
    ``most_changed`` (change measures)
        The value at the layer fine-tuning moved most, in the direction of each measure
        (``CHANGE_DIRECTION``): the minimum for similarities (``attention_cosine``, ``cka``,
        ``cka_debiased``), the maximum for ``attention_js``, the largest absolute value for
        ``attention_entropy_change`` (reported with its sign). A change measure with no known
        direction gets no ``most_changed`` row.
    ``most_changed_depth``
        Relative depth of that layer.
    ``mean``, ``last``
        Mean over layers; value at the deepest layer.

    Probe-dev rows (``dev_*``) serve only to pick the best layer, and ``chosen_C`` (the
    regularisation picked on probe-dev) only documents the probe: neither is ever correlated.

Correlation scopes
------------------
Every scope correlates the downstream score y with one feature x over grid points. The amount
of training data drives both (scores and most measures rise with the fraction), so a
correlation over fractions says little about whether x and y go together beyond that. The
tested scopes therefore remove the fraction (and, pooled, the model) by centring both variables
within cells, so that only the differences between seeds of the same model and fraction are
correlated.

``within_model`` (``model`` = the model)
    Unit of replication: a seed at one fraction. Controls: the fraction level, as a factor
    (x and y centred within each fraction level). Per-layer features use the model's raw layer
    index (``layer``) and its relative depth (``depth``).
``pooled`` (``model == "all"``)
    All models of a task. Unit of replication: a seed within a model x fraction cell.
    Controls: model fixed effects and fraction, i.e. the model x fraction cell (x and y centred
    within each cell). Layers of different models are pooled by relative depth only: the
    per-layer measures of a grid point are averaged within ``depth_bins`` equal-width bins of
    relative depth (``[0, 1/k), ..., [(k-1)/k, 1]``); ``depth`` is the bin centre and ``layer``
    is empty (NA), since a layer index means different depths in different models. A model with
    no layer in a bin adds no points to it. Aggregates are pooled as they are.
``raw`` (descriptive, not in the default scopes)
    All grid points of a task, per-layer features on the same depth bins, nothing controlled.
    It mixes the fraction effect with everything else; it gets no q-value, belongs to no BH
    family and is never reported as a finding.

Pearson is the correlation of the values centred within cells. Spearman is Spearman's rho of
those within-cell deviations (average ranks of the deviations over all points of the test, then
their Pearson correlation): an aligned-rank statistic. Ranking the raw values first and centring
the ranks within cells would be invariant to increasing transforms of x and y, but where the
fraction separates the cells (the usual case) it reduces each cell to the order of its few
seeds and discards how far they differ: in simulated grids (4 fractions x 3 seeds, x and y
sharing a within-fraction component with correlation 0.89) it detected the link in 75 % of grids
against 88 % for the aligned ranks (Pearson 92 %), with the same null rejection rate (about 4 %
at the 5 % level, also under heavy-tailed noise). Both are partial correlations given the cell
indicators, and the permutation null below is exact for either.

Grid points of one cell are exchangeable replicates; the same seed number at different
fractions or models is not treated as a link (each grid point is its own cluster within its
cell).

``n`` counts the grid points that enter a test: points with both values, in cells holding at
least two of them (a lone seed has no within-cell deviation and carries no information).
``n_clusters`` counts those cells and ``df = n - n_clusters - 1`` is the residual degrees of
freedom of the correlation after removing the cell means (for ``raw``: ``n - 2``). A test is
``underpowered`` when ``n < min_n`` or ``df < 1``: it keeps its coefficient and permutation
p-value as descriptive numbers but gets no interval and no q-value.

p-values come from a permutation test that shuffles x within cells (across all points for
``raw``), so the null "no association beyond the cell means" holds by construction. All
arrangements are enumerated when there are at most ``EXACT_LIMIT`` (``p = share of arrangements
with |r| >= observed``); otherwise ``n_perm`` arrangements are drawn (``p = (1 + hits) /
(1 + n_perm)``). Confidence intervals are percentile intervals of a stratified cluster bootstrap
that resamples seeds with replacement within each model x fraction cell (``n_boot`` resamples;
resamples where the coefficient is undefined are left out); each resample is held as the count
of every grid point in it and every coefficient is computed for all resamples at once from
those counts. Each test draws from generators seeded by ``(seed, crc32(test label))``, so a
result does not depend on which other tests ran. q-values are Benjamini-Hochberg adjusted within
each family ``<task>/<scope>`` (both methods, all models, measures and layers of the scope) over
its non-underpowered tests.
"""

from finescope.analysis.correlation import (
    correlate,
    correlations_job,
    normalize_correlations,
    scope_points,
)
from finescope.analysis.downstream import collect_downstream, downstream_table
from finescope.analysis.features import feature_table, normalize_tidy, pooled_features
from finescope.analysis.grid import layer_sort_key, normalize_fraction, sorted_fractions
from finescope.analysis.settings import (
    AGGREGATES,
    CORRELATION_COLUMNS,
    DEFAULT_SCOPES,
    DEPTH_BINS,
    DOWNSTREAM_COLUMNS,
    METHODS,
    NOTE_CONSTANT,
    NOTE_CONSTANT_CELLS,
    NOTE_NO_REPLICATES,
    RANDOM,
    SCOPES,
    TESTED_SCOPES,
    TIDY_COLUMNS,
)
from finescope.analysis.stats import Cells, bh_adjust, cluster_bootstrap, permutation_test
from finescope.analysis.summaries import downstream_stats, feature_label, primary_metric
from finescope.analysis.tidy import tables_job, tidy_measures

__all__ = [
    "AGGREGATES",
    "CORRELATION_COLUMNS",
    "Cells",
    "DEFAULT_SCOPES",
    "DEPTH_BINS",
    "DOWNSTREAM_COLUMNS",
    "METHODS",
    "NOTE_CONSTANT",
    "NOTE_CONSTANT_CELLS",
    "NOTE_NO_REPLICATES",
    "RANDOM",
    "SCOPES",
    "TESTED_SCOPES",
    "TIDY_COLUMNS",
    "bh_adjust",
    "cluster_bootstrap",
    "collect_downstream",
    "correlate",
    "correlations_job",
    "downstream_stats",
    "downstream_table",
    "feature_label",
    "feature_table",
    "layer_sort_key",
    "normalize_correlations",
    "normalize_fraction",
    "normalize_tidy",
    "permutation_test",
    "pooled_features",
    "primary_metric",
    "scope_points",
    "sorted_fractions",
    "tables_job",
    "tidy_measures",
]
