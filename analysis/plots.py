"""An experiment's figure from the results store (matplotlib), written in the format its file
extension names: .png, .pdf, .svg, .jpg or .jpeg.

    curves     a metric per epoch, one line per row setting (mean over seeds, ± std band), dotted
               lines where the phase changes (warmup -> divide -> conquer): Figure 1
    clusters   cluster sizes at each re-clustering round, one panel per setting
    metric_vs  a final metric against a numeric row field (e.g. recluster_every), with error bars
    bars       grouped bars: x = one row field, hue = another (e.g. loss x grouping)
    budget     a final metric against the training budget in epochs (warm-up + divide + conquer),
               one line per setting of the row fields other than plot.x (default epochs), band =
               95 % t-interval over seeds; below it the paired Δ vs the baseline setting at each
               budget with its interval: does a gain survive a longer schedule?
    search     a hyper-parameter search: the metric per trial in completion order with the
               running best, and the metric against each searched parameter; when the sweep holds
               an Optuna study (optuna.db), Optuna's own optimisation history and parameter
               importances are saved beside the figure as `<stem>-optuna-history<ext>` and
               `<stem>-optuna-importances<ext>` (see `optuna_paths`)

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global backend switch), so this
works in scripts, threads and notebooks alike. The Optuna figures are the exception: Optuna draws
with pyplot and sets its ggplot style globally, so they are drawn under `rc_context` (the style
does not leak into later figures) and closed once saved.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .schema import BEST_PREFIX, COMPLETED, PRUNED, SPANS, STATUS, spec_column
from .store import ExperimentData, StoreError, load_experiment, load_study
from .tables import paired_delta, partial_note, seed_cells, t_interval, with_running
from .vocabulary import (
    baseline_key,
    baseline_text,
    field_column,
    field_name,
    is_percent,
    is_seconds,
    join_keys,
    metric_column,
    metric_label,
    metric_mode,
    metric_values,
    named_label,
    ordered_keys,
    row_fields,
    row_keys,
    row_label,
    row_values,
    short_name,
    value_label,
)

KINDS = ("curves", "clusters", "metric_vs", "bars", "budget", "search")
FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
DPI = 120
PHASE_ORDER = ("warmup", "divide", "conquer", "baseline")
BUDGET_FIELDS = SPANS


# ---------------------------------------------------------------------------------- helpers
def _axis_label(name: str) -> str:
    base = name.removeprefix(BEST_PREFIX)
    split, _, rest = base.partition("_")
    label = metric_label(base)
    if split in ("val", "test") and rest:
        label = ("validation " if split == "val" else "test ") + label.replace("val ", "")
    if is_percent(base):
        return f"{label} (%)"
    if is_seconds(base):
        return f"{base.replace('_seconds', '').replace('_', ' ')} time (s)"
    return label


def _scale(name: str) -> float:
    return 100.0 if is_percent(name) else 1.0


def _pick_metric(data: ExperimentData, metric: str | None, trials: pd.DataFrame | None = None) -> str:
    """The metric to plot: asked for, else the card's plot.metric, else the table's first metric
    recorded, else the card's selection metric."""
    if metric:
        return metric.removeprefix(BEST_PREFIX)
    if data.plot.get("metric"):
        return str(data.plot["metric"])
    if trials is not None:
        for name in data.table.get("metrics") or []:
            if metric_column(trials, name) is not None:
                return name
    return data.metric


def _trial_keys(data: ExperimentData, epochs: pd.DataFrame, trials: pd.DataFrame) -> pd.Series:
    """Each epoch row's table row key (NaN for epochs of trials not in `trials`)."""
    keys = row_keys(data, trials)
    if "sweep" in epochs and "sweep" in trials:
        lookup = dict(zip(zip(trials["sweep"], trials["trial_id"]), keys))
        return pd.Series([lookup.get(k) for k in zip(epochs["sweep"], epochs["trial_id"])], index=epochs.index, dtype=object)
    lookup = dict(zip(trials["trial_id"], keys))
    return epochs["trial_id"].map(lookup)


def _notes(trials: pd.DataFrame, groups: pd.Series) -> dict[str, str]:
    """Group -> its partial note for a legend (" (partial: 1 running)"; "" when complete)."""
    return trials[STATUS].groupby(groups).agg(partial_note).to_dict() if STATUS in trials else {}


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def palette(data: ExperimentData) -> dict[str, Any]:
    """Row key -> color, the same in every figure of the experiment (table order)."""
    trials = data.with_status(None)
    keys = ordered_keys(data, row_keys(data, trials)) if len(trials) else []
    return dict(zip(keys, _colors(len(keys))))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _title(data: ExperimentData, text: str) -> str:
    """The experiment and what the figure shows; the sweep ids go into the file's metadata
    (`figure_metadata`), not the title a paper would print."""
    partial = len(data.partial())
    note = f"\nincludes {partial} running or interrupted trial{'s' if partial > 1 else ''} (partial)" if partial else ""
    return f"{data.name} ({data.preset or 'n/a'}): {text}{note}"


def figure_metadata(data: ExperimentData | None, fmt: str) -> dict[str, str] | None:
    """Where the figure comes from, in the keys each format keeps (PNG text chunks, PDF info,
    SVG Dublin Core); JPEG keeps none."""
    if data is None or fmt in ("jpg", "jpeg"):
        return None
    source = f"dncml experiment {data.name} (preset {data.preset or 'n/a'}); sweeps: {', '.join(data.sweeps)}"
    if data.store:
        source += f"; store: {data.store}"
    key = {"png": "Description", "pdf": "Subject", "svg": "Description"}[fmt]
    return {"Title": f"{data.name}: {', '.join(data.sweeps)}", key: source}


def _wrap(label: str, width: int = 16) -> str:
    """A category's tick label on lines of at most `width` characters."""
    return "\n".join(textwrap.wrap(str(label), width)) or str(label)


def category_ticks(ax, positions, labels: list[str]) -> None:
    """Readable category labels: wrapped, and turned 30 degrees when many would crowd the axis."""
    wrapped = [_wrap(label) for label in labels]
    crowded = sum(max(len(line) for line in w.split("\n")) for w in wrapped) > 60
    ax.set_xticks(positions, wrapped, rotation=30 if crowded else 0, ha="right" if crowded else "center")


def figure_format(out: str | Path) -> str:
    """The format the figure file's extension names (png, pdf, svg, jpg, jpeg); any other, or
    none, is an error rather than a file whose name says something else than its bytes."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        found = f"extension .{suffix}" if suffix else "no extension"
        raise StoreError(f"figure {str(out)!r} has {found}; use one of {', '.join('.' + f for f in FIGURE_FORMATS)}")
    return suffix


def _save(fig: Figure, out: str | Path, data: ExperimentData | None = None) -> Path:
    out = Path(out)
    fmt = figure_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format=fmt, bbox_inches="tight", metadata=figure_metadata(data, fmt))
    return out


# ------------------------------------------------------------------------------------ kinds
def _phase_changes(epochs: pd.DataFrame) -> dict[int, set[str]]:
    """First epoch of a new phase -> the phases starting there (across trials)."""
    changes: dict[int, set[str]] = {}
    if "phase" not in epochs:
        return changes
    group_by = [c for c in ("sweep", "trial_id") if c in epochs]
    for _, trial in epochs.sort_values("epoch").groupby(group_by):
        phases = trial["phase"].tolist()
        for (epoch, phase), previous in zip(zip(trial["epoch"].tolist()[1:], phases[1:]), phases[:-1]):
            if phase != previous and isinstance(phase, str):
                changes.setdefault(int(epoch), set()).add(phase)
    return changes


def _evaluated(epochs: pd.DataFrame) -> pd.Series:
    """Epoch rows that hold an evaluation (some validation metric recorded)."""
    names = [c for c in epochs.columns if c.startswith("val_")]
    return epochs[names].notna().any(axis=1) if names else pd.Series(False, index=epochs.index)


def curve_metrics(data: ExperimentData) -> list[str]:
    """The metrics a per-epoch figure can draw: those recorded at every evaluation. Validation
    metrics always are; test metrics only when the sweep ran `test_eval: every_eval` (with the
    default, `selected`, the test sets are embedded once, on the selected weights, at the end)."""
    epochs = data.epochs
    if epochs.empty:
        return []
    evaluated = _evaluated(epochs)
    names = [c for c in epochs.columns if c.startswith(("val_", "test_")) and epochs[c].notna().any()]
    return [c for c in names if evaluated.any() and epochs.loc[evaluated, c].notna().all()]


def _check_per_epoch(data: ExperimentData, epochs: pd.DataFrame, keys: list[str], metric: str) -> None:
    """A per-epoch curve needs the metric at every evaluation and every series needs points:
    else an error that says why, never a figure with one dot per row or an empty line."""
    evaluated = _evaluated(epochs)
    recorded = epochs[metric].notna()
    if metric.startswith("test_") and evaluated.any() and not recorded[evaluated].all():
        raise StoreError(
            f"{metric!r} is recorded at {int(recorded[evaluated].sum())} of {int(evaluated.sum())} evaluated epochs of "
            f"{data.name!r}: with `test_eval: selected` (the default) each trial is tested once, on its selected weights, "
            f"so there is no per-epoch test curve; draw a validation metric "
            f"({', '.join(curve_metrics(data)) or 'val_recall@1'}), or run the sweep with `test_eval: every_eval`"
        )
    empty = [key for key in keys if not recorded[epochs["_key"] == key].any()]
    if empty:
        labels = ", ".join(row_label(data, key, named=True) for key in empty)
        raise StoreError(
            f"no epoch of {labels} in {data.name!r} recorded {metric!r} (its trials have epochs, none with this metric); "
            f"metrics every evaluation recorded: {', '.join(curve_metrics(data)) or 'none'}"
        )


def plot_curves(data: ExperimentData, metric: str | None = None) -> Figure:
    trials = data.shown()
    metric = _pick_metric(data, metric)
    epochs = data.epochs
    if epochs.empty or metric not in epochs or epochs[metric].notna().sum() == 0:
        names = [c for c in epochs.columns if c.startswith(("val_", "test_")) and epochs[c].notna().any()] if len(epochs) else []
        names += [c for c in ("loss",) if c in epochs]
        raise StoreError(f"no epoch of {data.name!r} recorded {metric!r}; available per-epoch metrics: {', '.join(names) or 'none'}")
    epochs = epochs.assign(_key=_trial_keys(data, epochs, trials)).dropna(subset=["_key"])
    keys = ordered_keys(data, epochs["_key"].unique())
    _check_per_epoch(data, epochs, keys, metric)
    notes = _notes(trials, row_keys(data, trials))
    scale = _scale(metric)
    fig = Figure(figsize=(8.5, 5.6), layout="constrained")
    ax = fig.add_subplot()
    colors = palette(data)
    for index, key in enumerate(keys):
        color = colors.get(key, "black")
        rows = epochs[(epochs["_key"] == key) & epochs[metric].notna()]
        stats = (rows[metric] * scale).groupby(rows["epoch"] + 1).agg(["mean", "std", "count"])
        n = int(rows.groupby([c for c in ("sweep", "trial_id") if c in rows]).ngroups)
        x = stats.index.to_numpy(dtype=float)
        # Distinct markers and shrinking widths keep coinciding curves visible.
        ax.plot(
            x,
            stats["mean"],
            marker=MARKERS[index % len(MARKERS)] if len(x) <= 40 else None,
            markersize=7 - 4 * index / max(1, len(keys)),
            lw=2.6 - 1.4 * index / max(1, len(keys)),
            color=color,
            alpha=0.9,
            label=f"{row_label(data, key, named=True)} (n={n}){notes.get(key, '')}",
        )
        band = stats["std"].fillna(0.0)
        if (band > 0).any():
            ax.fill_between(x, stats["mean"] - band, stats["mean"] + band, color=color, alpha=0.18, lw=0)
    changes = _phase_changes(epochs)
    for epoch, phases in sorted(changes.items()):
        shown = sorted(phases - {"baseline"} or phases, key=lambda p: PHASE_ORDER.index(p) if p in PHASE_ORDER else 9)
        ax.axvline(epoch + 0.5, color="0.35", ls=":", lw=1.2)
        ax.text(
            epoch + 0.55,
            0.02,
            " / ".join(shown),
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="bottom",
            ha="left",
            fontsize=9,
            color="0.3",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(_axis_label(metric))
    hue = data.plot.get("hue") or ", ".join(row_fields(data))
    ax.set_title(
        _title(data, f"{metric_label(metric)} per epoch by {short_name(data, field_name(data, str(hue)))} (mean ± std over seeds)")
    )
    if epochs["epoch"].nunique() <= 25:
        ax.set_xticks(sorted((epochs["epoch"] + 1).unique()))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2 if len(keys) > 3 else len(keys), fontsize=9, frameon=False)
    return fig


EVIDENCE = (  # what each division round records (trainers' Assignment.evidence and changed), as drawn
    ("class_purity", "class purity\n(share of a class in its largest cluster)"),
    ("group_purity", "group purity\n(share of a cluster from its main group)"),
    ("classes_per_cluster", "classes per cluster (mean)"),
    ("cluster_changed", "samples that changed learner"),
)


def cluster_evidence(data: ExperimentData) -> pd.DataFrame:
    """One row per trial and division round: `key` (the row), `label`, `round` (epoch, from 1),
    and what the round did: class_purity, group_purity, classes_per_cluster (mean over its
    clusters), cluster_changed (share of samples moved since the last round), as recorded."""
    trials = data.shown()
    epochs = data.epochs
    if epochs.empty or "cluster_sizes" not in epochs or epochs["cluster_sizes"].notna().sum() == 0:
        raise StoreError(
            f"no trial of {data.name!r} re-clustered (no cluster_sizes in its epochs); "
            "a clusters plot needs a dividing grouping (random, gt_labels, kmeans ...)"
        )
    epochs = epochs.assign(_key=_trial_keys(data, epochs, trials)).dropna(subset=["_key", "cluster_sizes"])
    if epochs.empty:
        raise StoreError(f"no completed trial of {data.name!r} re-clustered (no cluster_sizes)")
    frame = pd.DataFrame({"key": epochs["_key"], "trial_id": epochs["trial_id"], "round": epochs["epoch"].astype(int) + 1})
    frame["label"] = frame["key"].map(lambda k: row_label(data, k, named=True))
    for name in ("class_purity", "group_purity", "cluster_changed"):
        frame[name] = pd.to_numeric(epochs[name], errors="coerce") if name in epochs else np.nan
    classes = epochs["cluster_classes"] if "cluster_classes" in epochs else pd.Series(None, index=epochs.index)
    frame["classes_per_cluster"] = [float(np.mean(json.loads(c))) if isinstance(c, str) else np.nan for c in classes]
    frame["cluster_sizes"] = epochs["cluster_sizes"]
    return frame.sort_values(["key", "round"]).reset_index(drop=True)


def plot_clusters(data: ExperimentData, metric: str | None = None) -> Figure:
    """Top: what each division round did, one line per setting (mean over seeds, band: 95 %
    interval; seaborn): class purity, group purity, classes per cluster, samples moved. Below:
    the cluster sizes at each round, one panel per setting."""
    import seaborn as sns

    evidence = cluster_evidence(data)
    keys = ordered_keys(data, evidence["key"].unique())
    labels = [row_label(data, k, named=True) for k in keys]
    colors = dict(zip(labels, (palette(data).get(k, c) for k, c in zip(keys, _colors(len(keys))))))
    panels = [(name, text) for name, text in EVIDENCE if evidence[name].notna().any()]
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(max(4.6 * ncols, 3.6 * max(1, len(panels))), 3.6 * nrows + (3.8 if panels else 0) + 0.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.8, 3.6 * nrows]) if panels else (None, fig)
    if panels:
        axes = top.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, text) in zip(axes, panels):
            shown = evidence.dropna(subset=[name])
            sns.lineplot(
                data=shown, x="round", y=name, hue="label", hue_order=labels, palette=colors, marker="o", errorbar=("ci", 95), ax=ax
            )
            ax.set_xticks(sorted(shown["round"].unique()))
            ax.set_xlabel("division round at epoch")
            ax.set_ylabel(text, fontsize=9)
            if name != "classes_per_cluster":
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
        handles, names = axes[0].get_legend_handles_labels()
        top.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=9, frameon=False)
        top.suptitle("what each division does (mean over seeds, band: 95 % interval)", fontsize=11)
    axes = bottom.subplots(nrows, ncols, squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, key, label in zip(axes.ravel(), keys, labels):
        rows = evidence[evidence["key"] == key]
        rounds = sorted(rows["round"].unique())
        sizes = [[s for text in rows.loc[rows["round"] == r, "cluster_sizes"] for s in json.loads(text)] for r in rounds]
        positions = list(range(1, len(rounds) + 1))
        ax.boxplot(
            sizes,
            positions=positions,
            widths=0.6,
            showfliers=False,
            medianprops={"color": "black"},
            boxprops={"color": "0.4"},
            whiskerprops={"color": "0.4"},
        )
        for pos, values in zip(positions, sizes):
            ax.scatter(pos + rng.uniform(-0.18, 0.18, len(values)), values, s=12, color=colors[label], alpha=0.75, zorder=3)
        counts = [len(json.loads(t)) for t in rows["cluster_sizes"]]
        ax.set_xticks(positions, [str(r) for r in rounds])
        ax.set_title(f"{label}\n(K up to {max(counts)}, {rows['trial_id'].nunique()} trial(s))", fontsize=10)
        ax.set_xlabel("division round at epoch")
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:, 0]:
        ax.set_ylabel("cluster size (training samples)")
    for ax in axes.ravel()[len(keys) :]:
        ax.set_visible(False)
    bottom.suptitle("cluster sizes at each round (dots: clusters, pooled over seeds)", fontsize=11)
    fig.suptitle(_title(data, "the groupings' clusters"))
    return fig


def _numeric(values: pd.Series) -> pd.Series | None:
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().all() else None


def plot_metric_vs(data: ExperimentData, metric: str | None = None) -> Figure:
    trials = data.shown()
    fields = row_fields(data)
    x_field = field_name(data, str(data.plot.get("x") or fields[0]))
    metric = _pick_metric(data, metric, trials)
    panels = [metric] + [
        m for m in (data.table.get("metrics") or []) if is_seconds(m) and m != metric and metric_column(trials, m) is not None
    ][:2]
    values = row_values(data, trials) if x_field in fields else pd.DataFrame(index=trials.index)
    x_raw = trials[field_column(trials, x_field)]
    x_num = _numeric(x_raw)
    others = [f for f in fields if f != x_field]
    groups = values[others].astype(str).agg(",".join, axis=1) if others else pd.Series("", index=trials.index)
    fig = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    categories = list(dict.fromkeys(x_raw.astype(str))) if x_num is None else None
    for ax, name in zip(axes, panels):
        y = metric_values(trials, name) * _scale(name)
        group_names = sorted(groups.unique())
        for group, color in zip(group_names, _colors(len(group_names))):
            mask = groups == group
            x = x_num[mask] if x_num is not None else x_raw[mask].astype(str).map({c: i for i, c in enumerate(categories)})
            stats = y[mask].groupby(x).agg(["mean", "std", "count"]).sort_index()
            label = named_label(data, others, group) if others else None
            # a line joins numbers only: categories get points with their error bars, unjoined
            style = "-" if x_num is not None else "none"
            ax.errorbar(
                stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=4, lw=1.8, ls=style, color=color, label=label
            )
            ax.scatter(x, y[mask], s=14, color=color, alpha=0.35, zorder=3)
        if x_num is None:
            category_ticks(ax, range(len(categories)), [value_label(data, c) for c in categories])
        elif x_num.nunique() <= 12:
            ax.set_xticks(sorted(x_num.unique()))
        short = short_name(data, x_field)
        ax.set_xlabel(f"{short} ({x_field})" if short != x_field else x_field)
        ax.set_ylabel(_axis_label(name))
        ax.set_title(f"{metric_label(name)} vs {short}", fontsize=11)
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=8)
    fig.suptitle(_title(data, "mean ± std over seeds (dots: trials)"))
    return fig


def plot_bars(data: ExperimentData, metric: str | None = None) -> Figure:
    """seaborn's bars (mean, ± std over seeds) with every trial as a dot on its bar."""
    import seaborn as sns

    trials = data.shown()
    fields = row_fields(data)
    x_field = field_name(data, str(data.plot.get("x") or fields[0]))
    hue = data.plot.get("hue")
    hue_field = field_name(data, str(hue)) if hue else next((f for f in fields if f != x_field), None)
    if hue_field == x_field:
        hue_field = None
    if x_field not in fields or (hue_field is not None and hue_field not in fields):
        raise StoreError(f"bars: x {x_field!r} and hue {hue_field!r} must be row fields of {data.name!r} ({', '.join(fields)})")
    metric = _pick_metric(data, metric, trials)
    values = row_values(data, trials)
    keys = ordered_keys(data, values.astype(str).agg(",".join, axis=1))
    index_of = {f: i for i, f in enumerate(fields)}
    xs = list(dict.fromkeys(k.split(",")[index_of[x_field]] for k in keys))
    hues = list(dict.fromkeys(k.split(",")[index_of[hue_field]] for k in keys)) if hue_field else []
    frame = pd.DataFrame({"x": values[x_field].astype(str), "y": metric_values(trials, metric) * _scale(metric)}).dropna()
    hue_args: dict[str, Any] = {"color": _colors(1)[0]}
    if hue_field:
        frame["hue"] = values.loc[frame.index, hue_field].astype(str).map(lambda v: value_label(data, v))
        labels = [value_label(data, h) for h in hues]
        hue_args = {"hue": "hue", "hue_order": labels, "palette": dict(zip(labels, _colors(len(labels))))}
    fig = Figure(figsize=(max(6.0, 1.1 * len(xs) * max(1, len(hues)) + 2), 4.8), layout="constrained")
    ax = fig.add_subplot()
    sns.barplot(data=frame, x="x", y="y", order=xs, errorbar="sd", capsize=0.15, err_kws={"linewidth": 1.2}, ax=ax, **hue_args)
    for container in ax.containers:  # the mean inside its bar, clear of the error bar and the dots
        ax.bar_label(container, fmt="%.1f", fontsize=8, label_type="center", color="white", fontweight="bold")
    strip = (
        {"hue": "hue", "hue_order": hue_args["hue_order"], "dodge": True, "palette": dict.fromkeys(hue_args["hue_order"], "black")}
        if hue_field
        else {"color": "black"}
    )
    sns.stripplot(data=frame, x="x", y="y", order=xs, size=3.5, alpha=0.6, legend=False, ax=ax, **strip)
    category_ticks(ax, range(len(xs)), [value_label(data, v) for v in xs])
    ax.set_xlabel(short_name(data, x_field))
    ax.set_ylabel(_axis_label(metric))
    ax.grid(alpha=0.3, axis="y")
    if hue_field:
        ax.legend(title=short_name(data, hue_field), fontsize=9)
    ax.set_title(
        _title(
            data,
            f"{metric_label(metric)} by {x_field}" + (f" and {hue_field}" if hue_field else "") + " (mean ± std over seeds; dots: trials)",
        )
    )
    return fig


def plot_search(data: ExperimentData, metric: str | None = None) -> Figure:
    trials = data.shown((COMPLETED, PRUNED))
    metric = metric.removeprefix(BEST_PREFIX) if metric else data.metric
    y = metric_values(trials, metric) * _scale(metric)
    order_by = [c for c in ("ended_at", "started_at", "trial_id") if c in trials]
    ranked = trials.assign(_y=y).sort_values(order_by, na_position="last").reset_index(drop=True)
    params = [field_name(data, p) for p in (data.card.get("search") or {})]
    params = [p for p in params if spec_column(p) in ranked]
    panels = 1 + len(params)
    ncols = min(4, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.7 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ax = axes[0]
    x = np.arange(1, len(ranked) + 1)
    pruned = ranked[STATUS] == PRUNED
    ax.scatter(x[~pruned], ranked["_y"][~pruned], s=22, color="tab:blue", label=COMPLETED, zorder=3)
    if pruned.any():
        ax.scatter(x[pruned], ranked["_y"][pruned], s=22, color="tab:gray", marker="x", label="pruned (ASHA)", zorder=3)
    best = ranked["_y"].cummax() if metric_mode(metric, data) == "max" else ranked["_y"].cummin()
    ax.step(x, best, where="post", color="tab:red", lw=1.8, label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel(_axis_label(metric))
    ax.set_title(f"{metric_label(metric)} per trial", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    distributions = {field_name(data, k): v for k, v in (data.card.get("search") or {}).items()}
    for ax, param in zip(axes[1:], params):
        values = pd.to_numeric(ranked[spec_column(param)], errors="coerce")
        ax.scatter(values, ranked["_y"], s=22, c=np.where(pruned, "tab:gray", "tab:blue"), zorder=3)
        spec = distributions.get(param) or {}
        if isinstance(spec, dict) and "loguniform" in spec and (values > 0).all():
            ax.set_xscale("log")
        elif values.notna().all() and (values % 1 == 0).all() and values.nunique() <= 10:
            ax.set_xticks(sorted(values.unique()))  # a choice of integers (K, T, m, d)
        ax.set_xlabel(f"{param}" + (f" ({short_name(data, param)})" if short_name(data, param) != param else ""))
        ax.set_ylabel(_axis_label(metric))
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(_title(data, f"search: {len(ranked)} trials selected on {metric}"))
    return fig


def trial_budget(trials: pd.DataFrame) -> pd.Series:
    """Each trial's training budget in epochs: warm-up + divide + conquer (a schedule column the
    trials lack counts 0, as the RunSpec default does)."""
    columns = [spec_column(f) for f in BUDGET_FIELDS if spec_column(f) in trials]
    if not columns:
        raise StoreError(f"the trials have no schedule columns ({', '.join('spec_' + f for f in BUDGET_FIELDS)})")
    return sum(pd.to_numeric(trials[c], errors="coerce").fillna(0) for c in columns)


def _line_of(fields: list[str], key: str, x_field: str) -> str:
    """A row key without the x field's value: the key of its line in the budget plot."""
    parts = key.split(",") if len(fields) > 1 else [key]
    return ",".join(v for f, v in zip(fields, parts) if f != x_field)


def budget_summary(data: ExperimentData, metric: str | None = None) -> pd.DataFrame:
    """The numbers of the budget plot, one row per (line, budget): `line` (the key of the row
    fields other than plot.x), `label`, `budget` (epochs), `steps` (the trials' mean optimiser
    steps, from their `train_steps`; NaN for older stores), the metric's `mean` and 95 %
    t-interval over seeds (`low`, `high`, `n`), and the paired difference from the baseline
    setting's line at the same budget (`delta`, `delta low`, `delta high`, `delta n`, `delta
    noise`; n = 0 for the baseline's own line and without a baseline), and the same difference
    at equal optimiser steps (`steps delta`, `steps delta low`, `steps delta high`, `steps delta
    n`; see `equal_steps_deltas`), for recipes whose schedule gives the lines unequal steps at
    one budget. Values as stored.
    attrs: metric, x (the field left out of the lines), fields (the line fields)."""
    trials = data.shown()
    metric = _pick_metric(data, metric, trials)
    y = metric_values(trials, metric)
    budget = trial_budget(trials)
    fields = row_fields(data)
    x_field = field_name(data, str(data.plot.get("x") or "epochs"))
    others = [f for f in fields if f != x_field]
    lines = join_keys(row_values(data, trials)[others])
    bases = {key: baseline_key(data, key) for key in row_keys(data, trials).unique()}
    base_of = {_line_of(fields, key, x_field): _line_of(fields, base, x_field) for key, base in bases.items() if base}
    notes = _notes(trials, lines)
    empty = pd.Series(dtype=float)
    steps_of = pd.to_numeric(trials["train_steps"], errors="coerce") if "train_steps" in trials else pd.Series(np.nan, index=trials.index)
    curves = _seed_curves(trials, y, steps_of, lines)
    records = []
    for b in sorted(budget.unique()):
        at = budget == b
        cells = seed_cells(trials[at], y[at], lines[at])
        step_cells = seed_cells(trials[at], steps_of[at], lines[at])
        for line in ordered_keys(data, lines[at], others):
            base = base_of.get(line)
            spread = t_interval(y[at & (lines == line)])
            delta = paired_delta(cells.get(line, empty), cells.get(base, empty)) if base not in (None, line) else t_interval([])
            steps = steps_of[at & (lines == line)]
            equal_steps = (
                t_interval(equal_steps_deltas(cells.get(line, empty), step_cells.get(line, empty), curves.get(base, {})))
                if base not in (None, line)
                else t_interval([])
            )
            records.append(
                {
                    "line": line,
                    "label": (named_label(data, others, line) if others else metric_label(metric)) + notes.get(line, ""),
                    "budget": float(b),
                    "steps": float(steps.mean()) if steps.notna().any() else float("nan"),  # optimiser steps: round robin gives D&C more
                    "mean": spread.mean,
                    "low": spread.low,
                    "high": spread.high,
                    "n": spread.n,
                    "delta": delta.mean,
                    "delta low": delta.low,
                    "delta high": delta.high,
                    "delta n": delta.n,
                    "delta noise": delta.noise,
                    "steps delta": equal_steps.mean,
                    "steps delta low": equal_steps.low,
                    "steps delta high": equal_steps.high,
                    "steps delta n": equal_steps.n,
                }
            )
    summary = pd.DataFrame(records)
    summary.attrs.update({"metric": metric, "x": x_field, "fields": others})
    return summary


def _seed_curves(trials: pd.DataFrame, values: pd.Series, steps: pd.Series, lines: pd.Series) -> dict[str, dict]:
    """line -> {(sweep, seed): (steps, values)}, sorted by steps: each seed's metric against its
    optimiser steps over the budgets, the baseline curve `equal_steps_deltas` reads."""
    if spec_column("seed") not in trials:
        return {}
    sweeps = trials["sweep"].astype(str) if "sweep" in trials else pd.Series("", index=trials.index)
    frame = pd.DataFrame({"line": lines, "sweep": sweeps, "seed": trials[spec_column("seed")], "steps": steps, "value": values})
    frame = frame.dropna().groupby(["line", "sweep", "seed", "steps"], as_index=False)["value"].mean()
    curves: dict[str, dict] = {}
    for (line, sweep, seed), points in frame.groupby(["line", "sweep", "seed"]):
        curves.setdefault(line, {})[(sweep, seed)] = (points["steps"].to_numpy(float), points["value"].to_numpy(float))
    return curves


def equal_steps_deltas(values: pd.Series, steps: pd.Series, base_curves: dict) -> list[float]:
    """A line's per-(sweep, seed) values minus the baseline of the same sweep and seed at the
    same optimiser steps: the baseline's value interpolated between its two budgets that bracket
    the line's steps, linear in log steps (an assumption; the budgets double), and none where the
    steps fall outside the baseline's budgets (no extrapolation). A seed without a baseline in
    its own sweep uses that seed's baseline curve from another sweep (`paired_delta` would use
    the mean over its sweeps)."""
    by_seed = {seed: curve for (_, seed), curve in base_curves.items()}
    differences = []
    for key, value in values.items():
        curve = base_curves.get(key, by_seed.get(key[1]))
        at = steps.get(key, math.nan)
        if curve is None or not np.isfinite(at) or at <= 0:
            continue
        base_steps, base_values = curve
        if base_steps[0] <= at <= base_steps[-1]:
            differences.append(value - float(np.interp(np.log(at), np.log(base_steps), base_values)))
    return differences


def plot_budget(data: ExperimentData, metric: str | None = None) -> Figure:
    summary = budget_summary(data, metric)
    metric, scale = summary.attrs["metric"], _scale(summary.attrs["metric"])
    lines = ordered_keys(data, summary["line"], summary.attrs["fields"])
    has_delta = bool((summary["delta n"] > 0).any())
    # Equal steps only where some line's steps differ from the baseline's at a budget (recipe
    # authors_code's round robin); under equal steps per epoch it repeats the equal-epochs Δ.
    unequal = (summary["steps delta n"] > 0) & ((summary["steps delta"] - summary["delta"]).abs() > 1e-12)
    has_steps_delta = has_delta and bool(unequal.any())
    fig = Figure(figsize=(8.5, 8.0 if has_delta else 5.6), layout="constrained")
    axes = fig.subplots(2 if has_delta else 1, 1, sharex=True, squeeze=False, height_ratios=[2, 1] if has_delta else None)[:, 0]
    budgets = sorted(summary["budget"].unique())
    dodge = 0.04 * (min(np.diff(budgets)) if len(budgets) > 1 else 1.0)
    for index, (line, color) in enumerate(zip(lines, _colors(len(lines)))):
        rows = summary[summary["line"] == line]
        fewest, most = int(rows["n"].min()), int(rows["n"].max())
        axes[0].plot(
            rows["budget"],
            rows["mean"] * scale,
            marker=MARKERS[index % len(MARKERS)],
            lw=1.8,
            color=color,
            label=f"{rows['label'].iloc[0]} (n={fewest}{f'-{most}' if most > fewest else ''})",
        )
        axes[0].fill_between(rows["budget"], rows["low"] * scale, rows["high"] * scale, color=color, alpha=0.18, lw=0)
        paired = rows[rows["delta n"] > 0]
        if has_delta and len(paired):
            x = paired["budget"] + dodge * (index - (len(lines) - 1) / 2)
            mean = paired["delta"] * scale
            error = [(mean - paired["delta low"] * scale).fillna(0.0), (paired["delta high"] * scale - mean).fillna(0.0)]
            axes[1].errorbar(x, mean, yerr=error, marker="o", capsize=4, lw=1.5, color=color)
            noise = paired["delta noise"].to_numpy(dtype=bool)
            axes[1].plot(x[noise], mean[noise], "o", color=color, markerfacecolor="white", zorder=3)
        matched = rows[rows["steps delta n"] > 0]
        if has_steps_delta and len(matched):
            x = matched["budget"] + dodge * (index - (len(lines) - 1) / 2 + 2.5)  # beside the equal-epochs bars
            mean = matched["steps delta"] * scale
            error = [(mean - matched["steps delta low"] * scale).fillna(0.0), (matched["steps delta high"] * scale - mean).fillna(0.0)]
            axes[1].errorbar(x, mean, yerr=error, marker="D", ms=5, capsize=3, lw=1.2, ls="--", color=color, alpha=0.8)
    axes[0].set_ylabel(_axis_label(metric))
    axes[0].grid(alpha=0.3)
    if has_delta:
        axes[1].axhline(0.0, color="0.3", lw=1.0)
        axes[1].set_ylabel(f"Δ {metric_label(metric)}" + (" (points)" if is_percent(metric) else ""))
        axes[1].set_title(
            f"paired by seed vs the baseline ({baseline_text(data)}) at the same budget; hollow: the 95 % interval spans 0"
            + ("\ndashed, ◆: at the same optimiser steps (the baseline interpolated in log steps)" if has_steps_delta else ""),
            fontsize=10,
        )
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("training budget (epochs: warm-up + divide + conquer)")
    if len(budgets) <= 12:
        axes[-1].set_xticks(budgets)
    axes[0].set_title(_title(data, f"{metric_label(metric)} vs training budget (mean, 95 % t-interval over seeds)"))
    fig.legend(loc="outside lower center", ncols=2 if len(lines) > 3 else max(1, len(lines)), fontsize=9, frameon=False)
    return fig


PLOTTERS = {
    "curves": plot_curves,
    "clusters": plot_clusters,
    "metric_vs": plot_metric_vs,
    "bars": plot_bars,
    "budget": plot_budget,
    "search": plot_search,
}


def misfit(data: ExperimentData, kind: str) -> str | None:
    """Why plot `kind` does not fit the experiment's data (None when it does)."""
    fields = row_fields(data)
    epochs = data.epochs
    if kind == "curves":
        return None if len(epochs) else "its trials recorded no epochs"
    if kind == "clusters":
        if "cluster_sizes" not in epochs or not epochs["cluster_sizes"].notna().any():
            return "no trial re-clustered (no cluster_sizes: a dividing grouping records them)"
        return None
    if kind == "search":
        return None if data.card.get("search") else "it is a grid, not a search (no `search:` in its spec)"
    if kind in ("bars", "metric_vs") and not fields:
        return "it has no row fields to put on the x axis"
    if kind == "metric_vs":
        x_field = field_name(data, str(data.plot.get("x") or fields[0]))
        trials = data.with_status(None)
        column = spec_column(x_field)
        if column in trials and _numeric(trials[column].dropna()) is None:
            return f"its x field {x_field} is categorical: lines would join categories (bars draws it)"
        return None
    if kind == "budget":
        try:
            budgets = trial_budget(data.with_status(None))
        except StoreError as error:
            return str(error)
        return None if budgets.nunique() > 1 else "every trial has the same budget (one epoch schedule)"
    return None


def fitting_kinds(data: ExperimentData) -> list[str]:
    """The plot kinds the experiment's data can draw."""
    return [kind for kind in KINDS if misfit(data, kind) is None]


def experiment_figure(data: ExperimentData, kind: str | None = None, metric: str | None = None) -> Figure:
    """The figure (not saved) of a loaded experiment; kind defaults to the card's plot.kind. A
    kind that does not fit the experiment is refused, naming the kinds that do."""
    kind = kind or data.plot.get("kind") or "curves"
    if kind not in PLOTTERS:
        raise StoreError(f"unknown plot kind {kind!r}; one of {', '.join(KINDS)}")
    reason = misfit(data, kind)
    if reason:
        raise StoreError(
            f"plot kind {kind!r} does not fit {data.name!r}: {reason}; kinds that do: {', '.join(fitting_kinds(data)) or 'none'}"
        )
    return PLOTTERS[kind](data, metric)


# ----------------------------------------------------------------------------------- optuna
def optuna_paths(out: str | Path) -> dict[str, Path]:
    """Where a search figure's Optuna companions go: `<stem>-optuna-history<ext>` and
    `<stem>-optuna-importances<ext>` beside `out` (Optuna draws each as its own pyplot figure)."""
    out = Path(out)
    return {name: out.with_name(f"{out.stem}-optuna-{name}{out.suffix}") for name in ("history", "importances")}


def save_optuna_figures(data: ExperimentData, out: str | Path) -> list[Path]:
    """Optuna's optimisation history (of every study among the sweeps read) and parameter
    importances (of the newest) at `optuna_paths(out)`; the paths written, [] without a study.
    Optuna logs a warning and draws an empty panel while no trial has finished."""
    studies = [load_study(data.store, sweep) for sweep in data.sweeps] if data.store else []
    studies = [s for s in studies if s is not None]
    if not studies:
        return []
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    history = studies if len(studies) > 1 else studies[0]  # one line per study when sweeps are pooled
    draw = {
        "history": lambda: plot_optimization_history(history, target_name=data.metric),
        "importances": lambda: plot_param_importances(studies[-1], target_name=data.metric),
    }
    written = []
    for name, path in optuna_paths(out).items():
        with rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            ax = draw[name]()
            try:
                written.append(_save(ax.figure, path))
            finally:
                plt.close(ax.figure)
    return written


def plot_experiment(
    store: str | Path | ExperimentData,
    experiment: str | None,
    out: str | Path,
    kind: str | None = None,
    sweep: str | None = None,
    metric: str | None = None,
    include_running: bool = False,
) -> Path:
    """Draw the experiment's figure and save it at `out`, in the format its extension names
    (.png, .pdf, .svg, .jpg, .jpeg); returns the path. kind: curves | clusters | metric_vs | bars
    | budget | search (default: the card's plot.kind, else curves); a search also writes Optuna's
    figures at `optuna_paths(out)` when its sweep holds a study. include_running: also the
    running and interrupted trials, at their best epoch so far (the title says how many)."""
    if kind is not None and kind not in PLOTTERS:
        raise StoreError(f"unknown plot kind {kind!r}; one of {', '.join(KINDS)}")
    figure_format(out)
    data = store if isinstance(store, ExperimentData) else load_experiment(store, experiment, sweep=sweep, include_running=include_running)
    data = with_running(data, include_running)
    path = _save(experiment_figure(data, kind, metric), out, data)
    if (kind or data.plot.get("kind")) == "search":
        save_optuna_figures(data, out)
    return path
