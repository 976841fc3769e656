"""Plain-language summary of a finescope run (``results/summary.md``).

The text is a pure function of its inputs (no timestamps, stable ordering), so re-running the
workflow on the same results writes the same file. Its last section lists the warnings the jobs
raised (see :mod:`finescope.job_warnings`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from finescope import analysis, job_warnings
from finescope.io import atomic_path

SIGNIFICANCE = 0.05

_LAYER_WORDS = {
    "best_layer": "at the layer with the best probe-dev score (test value)",
    "best_layer_depth": "(relative depth of the layer with the best probe-dev score)",
    "most_changed": "at the layer fine-tuning changed most",
    "most_changed_depth": "(relative depth of the layer fine-tuning changed most)",
    "mean": "averaged over layers",
    "last": "at the last layer",
}
_SCOPE_WORDS = {
    "within_model": "within {model}, across seeds at the same fraction",
    "pooled": "pooled over models, across seeds within each model × fraction cell",
}
_METHOD_SYMBOL = {"spearman": "Spearman ρ", "pearson": "Pearson r"}


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


def _where(row: Any) -> str:
    layer = row.layer
    if isinstance(layer, str) and layer in _LAYER_WORDS:
        return _LAYER_WORDS[layer]
    if isinstance(layer, str) and layer:
        depth = f" (relative depth {row.depth:.2f})" if math.isfinite(row.depth) else ""
        return f"at layer {layer}{depth}"
    if math.isfinite(row.depth):
        return f"in the relative-depth bin centred at {row.depth:.2f} (layers averaged)"
    return ""


def _describe(row: Any) -> str:
    feature = analysis.feature_label(row.measure_source, row.probe, row.measure)
    scope = _SCOPE_WORDS.get(row.scope, row.scope).format(model=row.model)
    symbol = _METHOD_SYMBOL.get(row.method, row.method)
    ci = (
        f"95 % CI {_fmt(row.ci_low, 2)} to {_fmt(row.ci_high, 2)}"
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high)
        else "no bootstrap interval"
    )
    return (
        f"{symbol} = {row.coefficient:+.3f} between the downstream score and {feature} "
        f"{_where(row)}, {scope} ({ci}, {_fmt_p(row.p_value)}, {_fmt_q(row.q_value)}, "
        f"n = {row.n} grid points in {row.n_clusters} cells)."
    )


def findings(correlations: pd.DataFrame) -> pd.DataFrame:
    """Rows that count as findings, best first.

    A finding is a test of a fraction-controlled scope (``analysis.TESTED_SCOPES``) that is not
    underpowered and has q < 0.05. Ranked by q, then by |coefficient|, then table order.

    Parameters
    ----------
    correlations
        Output of :func:`finescope.analysis.correlate` (or read back from its CSV).

    Returns
    -------
    pandas.DataFrame
        The qualifying rows, columns as ``correlations``.
    """
    frame = analysis.normalize_correlations(correlations)
    frame = frame[
        frame["scope"].isin(analysis.TESTED_SCOPES)
        & ~frame["underpowered"]
        & frame["coefficient"].notna()
        & (frame["q_value"] < SIGNIFICANCE)
    ]
    frame = frame.assign(_abs=-frame["coefficient"].abs())
    frame = frame.sort_values(["q_value", "_abs"], kind="stable")
    return frame.drop(columns="_abs")


def _scope_counts(part: pd.DataFrame) -> list[str]:
    lines = []
    for scope in analysis.TESTED_SCOPES:
        rows = part[part["scope"] == scope]
        if rows.empty:
            continue
        powered = rows[~rows["underpowered"]]
        tested = powered[powered["p_value"].notna()]
        significant = int((tested["q_value"] < SIGNIFICANCE).sum())
        controls = rows["controls"].iloc[0]
        lines.append(
            f"- {scope} (controls: {controls}): {len(rows)} tests, {len(rows) - len(powered)} "
            f"underpowered, {len(tested)} in the BH family {part['task'].iloc[0]}/{scope}, "
            f"{significant} with q < {SIGNIFICANCE}."
        )
    return lines


def _none_reason(part: pd.DataFrame) -> str:
    tested = part[part["scope"].isin(analysis.TESTED_SCOPES)]
    if tested.empty:
        return "No fraction-controlled test was run for this task."
    powered = tested[~tested["underpowered"]]
    if powered.empty:
        reasons = tested["note"].str.extract(r"underpowered: ([^;]*)")[0].dropna()
        counts = reasons.value_counts().sort_index()
        listed = _join([f"{why} ({count} tests)" for why, count in counts.items()])
        return f"No finding: every test is underpowered: {listed}."
    with_p = powered[powered["p_value"].notna()]
    if with_p.empty:
        return (
            "No finding: no adequately powered test could be computed (see the notes in "
            "correlations.csv)."
        )
    return (
        f"No finding: none of the {len(with_p)} adequately powered tests reached "
        f"q < {SIGNIFICANCE} (smallest q = {with_p['q_value'].min():.3f})."
    )


def _correlation_section(correlations: pd.DataFrame, top: int) -> list[str]:
    lines = ["## Findings", ""]
    if correlations is None or correlations.empty:
        lines += [
            "No correlation was computed: no fine-tuned grid point has both a downstream score "
            "and an internal measure.",
            "",
        ]
        return lines
    correlations = analysis.normalize_correlations(correlations)
    lines.append(
        "Each test relates the downstream score to an internal measure after removing the "
        "amount of training data: within a model, both are centred within each fraction level; "
        "pooled over models, within each model × fraction cell (layers of different models are "
        "pooled by relative depth only). What is left are differences between seeds. p-values "
        "come from permutations within those cells, intervals from a bootstrap that resamples "
        "seeds within cells, and q-values are Benjamini-Hochberg adjusted within each task × "
        "scope family. Tests below the minimum number of grid points are underpowered: they "
        "get no interval or q-value and are never listed as findings. Uncontrolled (raw) "
        "correlations are descriptive only and are not listed here."
    )
    lines.append("")
    for task in sorted(correlations["task"].unique()):
        part = correlations[correlations["task"] == task]
        lines.append(f"### Task {task}")
        lines.append("")
        lines += _scope_counts(part)
        lines.append("")
        found = findings(part)
        if found.empty:
            lines.append(_none_reason(part))
            lines.append("")
            continue
        shown = found.head(top)
        more = f" (the first {len(shown)} of {len(found)})" if len(found) > len(shown) else ""
        lines.append(f"Findings with q < {SIGNIFICANCE}, smallest q first{more}:")
        lines.append("")
        for i, row in enumerate(shown.itertuples(index=False), start=1):
            lines.append(f"{i}. {_describe(row)}")
        lines.append("")
        lines.append(
            "These are associations between seeds of the same model and fraction, not causal "
            "effects."
        )
        lines.append("")
    return lines


def _warnings_section(records: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Warnings", ""]
    if not records:
        return lines + ["No job of the run raised a warning.", ""]
    jobs = sorted({str(r.get("job", "?")) for r in records})
    lines.append(
        f"{len(records)} warning(s) from {len(jobs)} job(s); each job's are in "
        "`logs/<job>.warnings.jsonl` beside its log. The same message from several jobs is "
        "listed once, with its count and the jobs."
    )
    lines.append("")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in records:
        key = (str(r.get("stage", "other")), str(r.get("category", "")), str(r["message"]))
        groups.setdefault(key, []).append(str(r.get("job", "?")))
    for stage in sorted({k[0] for k in groups}):
        lines.append(f"### {stage}")
        lines.append("")
        for (_, category, message), where in sorted(
            ((k, v) for k, v in groups.items() if k[0] == stage),
            key=lambda kv: (-len(kv[1]), kv[0][2]),
        ):
            text = " ".join(message.split())  # one line in the list
            lines.append(f"- {len(where)}× {text} ({category}; from {', '.join(sorted(where))})")
        lines.append("")
    return lines


def render_summary(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    grid: Mapping[str, Any] | None,
    *,
    top: int = 5,
    warnings: Sequence[Mapping[str, Any]] | None = None,
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
        Number of findings listed per task.
    warnings
        The run's warning records (:func:`finescope.job_warnings.collect`), listed in a
        section "Warnings"; None leaves the section out.

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
    if warnings is not None:
        lines += _warnings_section(warnings)
    return "\n".join(lines).rstrip() + "\n"


def write_summary(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    grid: Mapping[str, Any] | None,
    out_path: str | Path,
    *,
    top: int = 5,
    warnings: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Write :func:`render_summary` to ``out_path`` atomically and return the text.

    Parameters
    ----------
    tidy, correlations, grid, top, warnings
        See :func:`render_summary`.
    out_path
        Destination, e.g. ``results/summary.md``.

    Returns
    -------
    str
        The text written.
    """
    text = render_summary(tidy, correlations, grid, top=top, warnings=warnings)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def summary_job(
    measures_path: str,
    correlations_path: str,
    grid: dict,
    out_path: str,
    logs_dir: str | Path = "logs",
) -> None:
    """The ``summary`` job: ``results/summary.md`` with the run's warnings."""
    # Globbed at run time, not rule inputs: the records are side files of the jobs' logs. Jobs
    # upstream of the tables have finished by now; figures and data_table may still be running.
    records = job_warnings.collect(logs_dir, grid)
    write_summary(
        pd.read_parquet(measures_path),
        pd.read_csv(correlations_path),
        grid,
        out_path,
        warnings=records,
    )
