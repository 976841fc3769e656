"""Plain-language summary of a finescope run (``results/summary.md``).

The text is a pure function of its inputs (no timestamps, stable ordering), so re-running the
workflow on the same results writes the same file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from finescope import analysis
from finescope.io import atomic_path

# Below this many points a correlation is flagged as descriptive only.
SMALL_N = 10
SIGNIFICANCE = 0.05

_LAYER_WORDS = {
    "best": "at its best layer",
    "mean": "averaged over layers",
    "last": "at the last layer",
    "best_depth": "(relative depth of its best layer)",
}
_SCOPE_WORDS = {
    "across": "pooled over all models, fractions and seeds",
    "seeds_averaged": "over models and fractions, seeds averaged",
    "within_model": "within model {model}, across fractions and seeds",
    "partial": "pooled, controlling for the fraction of training data",
}
_METHOD_SYMBOL = {"spearman": "Spearman ρ", "pearson": "Pearson r", "kendall": "Kendall τ"}


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _fmt_q(q: float) -> str:
    if q is None or not math.isfinite(q):
        return "q n/a"
    if q < 0.001:
        return "q < 0.001"
    return f"q = {q:.3f}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "none"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _fraction_words(fraction: str) -> str:
    if fraction == analysis.RANDOM:
        return "random weights"
    return "0 % (pre-trained)" if fraction == "0" else f"{fraction} %"


def _grid_values(grid: Mapping[str, Any], key: str, fallback: Iterable[Any]) -> list[Any]:
    values = grid.get(key) if grid else None
    if values is None:
        values = fallback
    if isinstance(values, (str, int)):
        values = [values]
    return list(values)


def _grid_section(tidy: pd.DataFrame, grid: Mapping[str, Any]) -> list[str]:
    tasks = sorted(str(t) for t in _grid_values(grid, "tasks", tidy["task"].unique()))
    models = sorted(str(m) for m in _grid_values(grid, "models", tidy["model"].unique()))
    fractions = analysis.sorted_fractions(
        _grid_values(grid, "fractions", tidy["fraction"].unique())
    )
    fine_tuned = [f for f in fractions if f not in (analysis.RANDOM, "0")]
    seed_fallback = (
        tidy.loc[tidy["source"] == "downstream", "seed"].dropna().unique() if not tidy.empty else []
    )
    seeds = sorted(int(s) for s in _grid_values(grid, "seeds", seed_fallback))

    lines = ["## Grid", ""]
    lines.append(
        f"The study covers {len(tasks)} task(s) ({_join(tasks)}), {len(models)} model(s) and "
        f"the fractions {_join([_fraction_words(f) for f in fractions if f != 'random'])} "
        f"of the training data, with seed(s) {_join([str(s) for s in seeds])}."
    )
    if models:
        lines.append("")
        lines.append("Models:")
        lines.append("")
        for model in models:
            rows = tidy[tidy["model"] == model]
            family = rows["family"].iloc[0] if not rows.empty else "unknown"
            domain = rows["domain"].iloc[0] if not rows.empty else "unknown"
            layers = rows["layer"].dropna()
            depth = (
                f", {int(layers.max()) + 1} layers seen (embeddings + blocks)"
                if not layers.empty
                else ""
            )
            lines.append(f"- {model}: {family}, {domain} domain{depth}.")
    has_random = bool((tidy["fraction"] == analysis.RANDOM).any()) if not tidy.empty else False
    lines.append("")
    lines.append(
        "A random-weights baseline was probed and is shown in the figures; it is left out of "
        "all correlations."
        if has_random
        else "No random-weights baseline is in the results."
    )
    expected = len(models) * len(fine_tuned) * len(seeds)
    down = tidy[(tidy["source"] == "downstream") & (tidy["measure"] == "score")]
    lines.append("")
    for task in tasks:
        got = down[down["task"] == task]
        points = got[["model", "fraction", "seed"]].drop_duplicates()
        text = (
            f"Task {task}: {len(points)} fine-tuned grid point(s) have a downstream score "
            f"(the grid defines {expected})."
        )
        if expected and len(points) < expected:
            have = {(str(m), str(f), int(s)) for m, f, s in points.itertuples(index=False)}
            missing = [
                f"{m} {f} % seed {s}"
                for m in models
                for f in fine_tuned
                for s in seeds
                if (m, f, s) not in have
            ]
            shown = (
                ", ".join(missing[:5]) + f" and {len(missing) - 5} more"
                if len(missing) > 5
                else _join(missing)
            )
            text += f" Missing: {shown}."
        lines.append(text)
        lines.append("")
    return lines


def _downstream_section(tidy: pd.DataFrame) -> list[str]:
    lines = ["## Downstream scores", ""]
    stats = analysis.downstream_stats(tidy)
    if stats.empty:
        lines += ["No fine-tuned grid point has a downstream score.", ""]
        return lines
    for task in sorted(stats["task"].unique()):
        part = stats[stats["task"] == task]
        fractions = sorted(part["fraction"].unique())
        primary = analysis.primary_metric(tidy, task)
        lines.append(
            f"Task {task}: downstream score ({primary} on the test split), mean ± sd over "
            "seeds (number of seeds in brackets)."
        )
        lines.append("")
        lines.append("| model | " + " | ".join(f"{f:g} %" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for model in sorted(part["model"].unique()):
            cells = []
            for fraction in fractions:
                row = part[(part["model"] == model) & (part["fraction"] == fraction)]
                if row.empty:
                    cells.append("–")
                    continue
                r = row.iloc[0]
                sd = "" if not math.isfinite(r["sd"]) else f" ± {r['sd']:.3f}"
                cells.append(f"{r['mean']:.3f}{sd} ({int(r['n'])})")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
        top_fraction = fractions[-1]
        at_top = part[part["fraction"] == top_fraction].sort_values(
            ["mean", "model"], ascending=[False, True], kind="stable"
        )
        best = at_top.iloc[0]
        sentence = (
            f"With {top_fraction:g} % of the training data the highest mean score is "
            f"{best['mean']:.3f} ({best['model']})"
        )
        if len(at_top) > 1:
            worst = at_top.iloc[-1]
            sentence += f" and the lowest {worst['mean']:.3f} ({worst['model']})"
        lines.append(sentence + ".")
        if part["n"].max() < 2:
            lines.append("Each cell comes from a single seed, so no spread across seeds is known.")
        lines.append("")
    return lines


def _describe(row: Any) -> str:
    feature = analysis.feature_label(row.measure_source, row.probe, row.measure)
    layer = str(row.layer)
    where = _LAYER_WORDS.get(layer, f"at layer {layer}")
    scope = _SCOPE_WORDS.get(row.scope, row.scope).format(model=row.model)
    symbol = _METHOD_SYMBOL.get(row.method, row.method)
    ci = (
        f"95 % CI {_fmt(row.ci_low, 2)} to {_fmt(row.ci_high, 2)}"
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high)
        else "no bootstrap interval"
    )
    text = (
        f"{symbol} = {row.coefficient:+.3f} between the downstream score and {feature} "
        f"{where}, {scope} ({ci}, {_fmt_p(row.p_value)}, {_fmt_q(row.q_value)}, n = {row.n})."
    )
    if row.n < SMALL_N:
        text += (
            f" Caution: only {row.n} points; a coefficient this size can arise by chance and "
            "should be read as descriptive."
        )
    return text


def _strongest(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    frame = frame[frame["coefficient"].notna()]
    frame = frame.assign(
        _abs=-frame["coefficient"].abs(),
        _q=frame["q_value"].fillna(2.0),
        _layer=[analysis.layer_sort_key(v) for v in frame["layer"]],
        _probe=frame["probe"].fillna(""),
    )
    frame = frame.sort_values(
        ["_abs", "_q", "measure_source", "_probe", "measure", "_layer"], kind="stable"
    )
    return frame.head(top)


def _correlation_section(correlations: pd.DataFrame, top: int) -> list[str]:
    lines = ["## Strongest correlations", ""]
    if correlations is None or correlations.empty:
        lines += [
            "No correlation was computed: no fine-tuned grid point has both a downstream score "
            "and an internal measure.",
            "",
        ]
        return lines
    lines.append(
        "Coefficients relate the downstream score of each fine-tuned grid point to an internal "
        "measure of the same grid point. q-values are Benjamini-Hochberg adjusted over all "
        "tests of a task; intervals are 95 % bootstrap percentile intervals over grid points."
    )
    lines.append("")
    for task in sorted(correlations["task"].unique()):
        part = correlations[correlations["task"] == task]
        computed = part[part["coefficient"].notna()]
        significant = int((computed["q_value"] < SIGNIFICANCE).sum())
        lines.append(f"### Task {task}")
        lines.append("")
        lines.append(
            f"{len(part)} tests, {len(computed)} with a coefficient, {significant} with "
            f"q < {SIGNIFICANCE}."
        )
        notes = part.loc[part["coefficient"].isna(), "note"].fillna("").replace("", "undefined")
        if not notes.empty:
            counts = notes.value_counts().sort_index()
            lines.append(
                "Not computable: "
                + _join([f"{count} ({note})" for note, count in counts.items()])
                + "."
            )
        lines.append("")
        spearman = computed[computed["method"] == "spearman"]
        groups = [
            ("Pooled over all grid points", spearman[spearman["scope"] == "across"], top),
            (
                "Controlling for the fraction of training data",
                spearman[spearman["scope"] == "partial"],
                max(1, top // 2),
            ),
        ]
        any_rows = False
        for title, frame, k in groups:
            best = _strongest(frame, k)
            if best.empty:
                continue
            any_rows = True
            lines.append(f"{title}, the strongest Spearman correlations:")
            lines.append("")
            for i, row in enumerate(best.itertuples(index=False), start=1):
                lines.append(f"{i}. {_describe(row)}")
            lines.append("")
        if not any_rows:
            lines.append(
                "No Spearman coefficient could be computed for this task (see the notes above)."
            )
            lines.append("")
            continue
        max_n = int(computed["n"].max()) if not computed.empty else 0
        if max_n < SMALL_N:
            lines.append(
                f"Caution: at most {max_n} grid points enter any coefficient of this task. "
                "With so few points the p-values, q-values and intervals are rough and the "
                "coefficients are descriptive, not evidence of a relation."
            )
            lines.append("")
        lines.append(
            "Correlations across grid points mix the effect of the amount of training data with "
            "differences between models; the partial and within-model rows of correlations.csv "
            "separate them. A correlation is not a causal effect."
        )
        lines.append("")
    return lines


def render_summary(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    grid: Mapping[str, Any] | None,
    *,
    top: int = 5,
) -> str:
    """The summary as Markdown text.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    correlations
        Output of :func:`finescope.analysis.correlate`.
    grid
        The grid that was run: keys ``tasks``, ``models``, ``fractions``, ``seeds`` (lists);
        a missing key is read from ``tidy``.
    top
        Number of strongest pooled correlations listed per task.

    Returns
    -------
    str
    """
    grid = grid or {}
    tidy = analysis.normalize_tidy(tidy)
    lines = ["# finescope summary", ""]
    lines += _grid_section(tidy, grid)
    lines += _downstream_section(tidy)
    lines += _correlation_section(correlations, top)
    return "\n".join(lines).rstrip() + "\n"


def write_summary(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    grid: Mapping[str, Any] | None,
    out_path: str | Path,
    *,
    top: int = 5,
) -> str:
    """Write :func:`render_summary` to ``out_path`` atomically and return the text.

    Parameters
    ----------
    tidy, correlations, grid, top
        See :func:`render_summary`.
    out_path
        Destination, e.g. ``results/summary.md``.

    Returns
    -------
    str
        The text written.
    """
    text = render_summary(tidy, correlations, grid, top=top)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text
