"""An experiment's table: one row per setting (the card's `rows` fields), mean ± std over seeds.

`experiment_table` gives the numbers as a DataFrame (metrics as stored: recall, NMI and MAP@R in
0..1, timings in seconds); `render_table` writes it as Markdown, LaTeX, HTML or CSV with a
caption, recall/NMI/MAP@R shown in % (as the paper reports them), the best cell per column in
bold, a Δ column against the baseline row and the paper's numbers beside ours.

A trial's value of a metric such as `test_recall@1` is its `best_test_recall@1` column: the value
at the epoch the sweep's selection metric (validation) chose. Trial columns such as
`cluster_seconds` or `wall_seconds` are used as they are.
"""
from __future__ import annotations

import csv
import html
import io
import itertools
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .store import ExperimentData, StoreError, load_experiment

FORMATS = ("md", "latex", "html", "csv")
TRIAL_METRICS = ("wall_seconds", "train_seconds", "cluster_seconds", "eval_seconds", "epochs_done", "best_epoch")
ALIASES = {"K": "num_learners", "T": "recluster_every", "m": "samples_per_class", "d": "embedding_dim"}
_PERCENT = re.compile(r"(recall@|nmi|map@|precision@|accuracy)")


# ------------------------------------------------------------------------------ metric names
def base_metric(name: str) -> str:
    """`best_test_recall@1` / `final_test_recall@1` -> `test_recall@1`."""
    for prefix in ("best_", "final_"):
        if name.startswith(prefix) and name != "best_epoch":
            return name[len(prefix):]
    return name


def is_percent(name: str) -> bool:
    """Recall, NMI, MAP@R: fractions in the store, shown in %."""
    return bool(_PERCENT.search(base_metric(name)))


def is_seconds(name: str) -> bool:
    return "seconds" in name


def metric_label(name: str) -> str:
    """A short column header: test_recall@1 -> R@1, val_recall@1 -> val R@1, test_nmi -> NMI,
    test_map@r -> MAP@R, cluster_seconds -> cluster s."""
    base = base_metric(name)
    split, _, rest = base.partition("_")
    if split in ("test", "val") and rest:
        pretty = re.sub(r"^recall@", "R@", rest)
        pretty = {"nmi": "NMI", "map@r": "MAP@R"}.get(pretty, pretty.replace("map@", "MAP@"))
        return pretty if split == "test" else f"val {pretty}"
    if is_seconds(base):
        return base.replace("_seconds", " s")
    return base.replace("_", " ")


def metric_mode(name: str, data: ExperimentData | None = None) -> str:
    """max or min: the card's mode for its selection metric; min for timings and losses; max else."""
    base = base_metric(name)
    if data is not None and base == data.metric:
        return data.mode
    if is_seconds(base) or base == "loss" or base.endswith("_loss"):
        return "min"
    return "max"


def available_metrics(trials: pd.DataFrame) -> list[str]:
    """The metric names some trial recorded (best_<name> columns, then timing columns)."""
    names = [c[5:] for c in trials.columns if c.startswith("best_") and c != "best_epoch" and trials[c].notna().any()]
    names += [c for c in TRIAL_METRICS if c in trials and trials[c].notna().any()]
    return names


def metric_column(trials: pd.DataFrame, name: str) -> str | None:
    """The trials' column holding metric `name` (None when no trial recorded it)."""
    for column in (f"best_{name}", name):
        if column in trials and not (column == "best_epoch" and name != "best_epoch") and trials[column].notna().any():
            return column
    return None


def metric_values(trials: pd.DataFrame, name: str) -> pd.Series:
    column = metric_column(trials, name)
    if column is None:
        raise StoreError(f"no trial recorded metric {name!r}; available: {', '.join(available_metrics(trials)) or 'none'}")
    return pd.to_numeric(trials[column], errors="coerce")


def resolve_metrics(data: ExperimentData, trials: pd.DataFrame, metrics: Iterable[str] | str | None) -> list[str]:
    """Metrics asked for (each must be recorded) or the card's (those recorded)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics:
        names = [m[len("best_"):] if m.startswith("best_") and m != "best_epoch" else m for m in metrics]
        missing = [m for m in names if metric_column(trials, m) is None]
        if missing:
            raise StoreError(f"no trial of {data.name!r} recorded metric{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(repr, missing))}; available: {', '.join(available_metrics(trials)) or 'none'}")
        return names
    wanted = list(data.table.get("metrics") or []) or [data.metric]
    names = [m for m in wanted if metric_column(trials, m) is not None]
    if not names and metric_column(trials, data.metric) is not None:
        names = [data.metric]
    if not names:
        raise StoreError(f"no trial of {data.name!r} recorded any of {', '.join(wanted)}; "
                         f"available: {', '.join(available_metrics(trials)) or 'none'}")
    return names


# ----------------------------------------------------------------------------------- rows
def fmt_value(value: Any) -> str:
    """A row value as text: 4.0 -> "4", True -> "True", None/NaN -> "None"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def row_fields(data: ExperimentData) -> list[str]:
    """The fields a table row stands for (the card's `rows`; one row per trial when it has none)."""
    return [ALIASES.get(f, f) for f in data.rows] or ["trial_id"]


def _field_column(trials: pd.DataFrame, field: str) -> str:
    for column in (f"spec_{field}", field):
        if column in trials:
            return column
    raise StoreError(f"the trials have no column for row field {field!r} (expected spec_{field})")


def row_values(data: ExperimentData, trials: pd.DataFrame) -> pd.DataFrame:
    """One text column per row field, for every trial."""
    return pd.DataFrame({f: [fmt_value(v) for v in trials[_field_column(trials, f)].tolist()] for f in row_fields(data)},
                        index=trials.index)


def row_keys(data: ExperimentData, trials: pd.DataFrame) -> pd.Series:
    """Each trial's row key: its row field values joined by commas ("kmeans", "triplet,kmeans")."""
    values = row_values(data, trials)
    return values.astype(str).agg(",".join, axis=1) if len(values) else pd.Series([], dtype=object, index=trials.index)


def _natural(key: str) -> tuple:
    parts = []
    for part in key.split(","):
        try:
            parts.append((0, float(part), ""))
        except ValueError:
            parts.append((1, 0.0, part))
    return tuple(parts)


def _key_of(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(fmt_value(v) for v in value.values())
    return fmt_value(value)


def ordered_keys(data: ExperimentData, keys: Iterable[str]) -> list[str]:
    """The table's `order` first, then the grid's order of the row fields, then natural order."""
    keys = list(dict.fromkeys(keys))
    ranked: list[str] = [_key_of(k) for k in data.table.get("order") or []]
    grid = data.card.get("grid") or {}
    fields = row_fields(data)
    if all(f in grid for f in fields):
        ranked += [",".join(fmt_value(v) for v in combo) for combo in itertools.product(*(grid[f] for f in fields))]
    rank = {k: i for i, k in reversed(list(enumerate(ranked)))}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), _natural(k)))


def row_label(data: ExperimentData, key: str) -> str:
    """The table's label for a row key, else its values (joined by ", ")."""
    labels = {_key_of(k): str(v) for k, v in (data.table.get("labels") or {}).items()}
    if key in labels:
        return labels[key]
    if len(row_fields(data)) > 1:
        return ", ".join(labels.get(part, part) for part in key.split(","))
    return key


def baseline_key(data: ExperimentData, key: str) -> str | None:
    """The key of the row `key` is compared with: the card's baseline row; a mapping such as
    {grouping: none} for multi-field rows keeps the other fields (triplet,kmeans -> triplet,none)."""
    baseline = data.table.get("baseline")
    if baseline is None:
        return None
    fields = row_fields(data)
    if isinstance(baseline, dict):
        mapping = {ALIASES.get(str(k), str(k)): fmt_value(v) for k, v in baseline.items()}
    elif isinstance(baseline, (list, tuple)):
        mapping = dict(zip(fields, map(fmt_value, baseline)))
    else:
        parts = fmt_value(baseline).split(",") if len(fields) > 1 else [fmt_value(baseline)]
        mapping = dict(zip(fields, parts)) if len(parts) == len(fields) else {fields[0]: fmt_value(baseline)}
    if not set(mapping) & set(fields):
        return None
    values = dict(zip(fields, key.split(",") if len(fields) > 1 else [key]))
    values.update({f: v for f, v in mapping.items() if f in fields})
    return ",".join(values[f] for f in fields)


# ---------------------------------------------------------------------------------- table
def experiment_table(data: ExperimentData, metrics: Iterable[str] | str | None = None,
                     status=("completed",)) -> pd.DataFrame:
    """One row per setting (index: the row key), in the table's order. Columns: `label`, the row
    fields, `trials`, then per metric `<m> mean`, `<m> std` (over seeds, ddof 1), `<m> n`,
    `<m> delta` (mean minus the baseline row's mean; NaN without a baseline) and `<m> best`
    (True on the best row, by max or min), then `paper <label>` for the paper's numbers (in %).
    Values are as stored (recall in 0..1, seconds). `table.attrs` holds metrics, fields, baseline."""
    trials = data.with_status(status)
    if trials.empty:
        wanted = status if isinstance(status, str) else ", ".join(status or ())
        raise StoreError(f"experiment {data.name!r}: no {wanted} trials in {', '.join(data.sweeps)}")
    names = resolve_metrics(data, trials, metrics)
    fields = row_fields(data)
    values = row_values(data, trials)
    keys = values.astype(str).agg(",".join, axis=1)
    order = ordered_keys(data, keys)

    table = pd.DataFrame(index=pd.Index(order, name="row"))
    table["label"] = [row_label(data, k) for k in order]
    first = values.groupby(keys).first()
    for field in fields:
        table[field] = [first.loc[k, field] for k in order]
    table["trials"] = keys.value_counts().reindex(order).astype(int)
    bases = {k: baseline_key(data, k) for k in order}
    for name in names:
        numbers = metric_values(trials, name)
        grouped = numbers.groupby(keys)
        mean = grouped.mean().reindex(order)
        table[f"{name} mean"] = mean
        table[f"{name} std"] = grouped.std(ddof=1).reindex(order)
        table[f"{name} n"] = grouped.count().reindex(order).fillna(0).astype(int)
        table[f"{name} delta"] = [mean[k] - mean[bases[k]] if bases[k] in mean.index else np.nan for k in order]
        target = mean.max() if metric_mode(name, data) == "max" else mean.min()
        table[f"{name} best"] = mean.notna() & ((mean - target).abs() <= 1e-12)
    paper = {_key_of(k): v for k, v in (data.table.get("paper") or {}).items() if isinstance(v, dict)}
    labels = list(dict.fromkeys(label for row in paper.values() for label in row))
    for label in labels:
        table[f"paper {label}"] = [pd.to_numeric((paper.get(k) or {}).get(label), errors="coerce") for k in order]
    table.attrs.update({"experiment": data.name, "metrics": names, "fields": fields,
                        "labelled": bool(data.table.get("labels")),
                        "baselines": {k: b for k, b in bases.items() if b in table.index},
                        "paper": [f"paper {label}" for label in labels]})
    return table


def paper_comparison(data: ExperimentData, metric: str = "test_recall@1", paper_column: str | None = None) -> pd.DataFrame:
    """Ours beside the paper's, both in %: `ours`, `ours Δ` (vs the baseline row), `paper`,
    `paper Δ`. paper_column: the paper's column (default: the metric's label, e.g. R@1)."""
    table = experiment_table(data, [metric])
    column = f"paper {paper_column or metric_label(metric)}"
    scale = 100.0 if is_percent(metric) else 1.0
    out = pd.DataFrame(index=table.index)
    out["label"] = table["label"]
    out["ours"] = table[f"{metric} mean"] * scale
    out["ours std"] = table[f"{metric} std"] * scale
    out["ours Δ"] = table[f"{metric} delta"] * scale
    paper = table[column] if column in table else pd.Series(np.nan, index=table.index)
    out["paper"] = paper
    bases = table.attrs.get("baselines", {})
    out["paper Δ"] = [paper[k] - paper[bases[k]] if k in bases else np.nan for k in table.index]
    return out


# ---------------------------------------------------------------------------------- render
def _number(value: float, name: str, signed: bool = False) -> str:
    if is_percent(name):
        value, digits = value * 100.0, 1
    elif is_seconds(name):
        digits = 1 if abs(value) >= 1 else 2
    elif float(value).is_integer() and not signed:
        return f"{int(value)}"
    else:
        digits = 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cell(mean: float, std: float, n: int, name: str) -> str:
    if pd.isna(mean):
        return "–"
    text = _number(mean, name)
    if n > 1 and pd.notna(std):
        text += f" ± {_number(std, name)}"
    return f"{text} (n={n})"


def _caption(data: ExperimentData, table: pd.DataFrame, trials: pd.DataFrame) -> str:
    names = table.attrs["metrics"]
    sweeps = data.sweeps[0] if len(data.sweeps) == 1 else f"{len(data.sweeps)} sweeps"
    datasets = sorted({str(v) for v in trials.get("spec_dataset", pd.Series(dtype=object)).dropna()})
    completed = data.with_status(("completed",))
    others = data.trials["status"].value_counts().drop("completed", errors="ignore") if "status" in data.trials else {}
    per_row = sorted(set(int(n) for n in table["trials"]))
    seeds = f"{per_row[0]}" if len(per_row) == 1 else f"{per_row[0]}-{per_row[-1]}"
    parts = [f"{data.name} (preset {data.preset or 'n/a'}; {sweeps}; dataset {', '.join(datasets) or 'n/a'}): "
             f"{len(completed)} completed trials, {seeds} seed{'' if seeds == '1' else 's'} per row"
             + (f" ({', '.join(f'{int(n)} {s}' for s, n in others.items())} not shown)" if len(others) else "")
             + f"; each trial's values at its epoch with the best {data.metric} ({data.mode})."]
    if any(is_percent(n) for n in names):
        parts.append("Recall, NMI and MAP@R in % (mean ± std over seeds; n = trials).")
    if any(is_seconds(n) for n in names):
        parts.append("Times in seconds.")
    parts.append("Bold: best per column.")
    if table.attrs["baselines"]:
        baseline = data.table.get("baseline")
        shown = ", ".join(f"{k}={v}" for k, v in baseline.items()) if isinstance(baseline, dict) else fmt_value(baseline)
        parts.append(f"Δ: {metric_label(names[0])} minus the baseline row's ({shown})"
                     + (", in points." if is_percent(names[0]) else "."))
    if table.attrs["paper"]:
        source = data.table.get("paper_dataset")
        parts.append("Paper columns: the paper's numbers" + (f" on {source}" if source else "") + " (%).")
    return " ".join(parts)


def _grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, text cells and bold flags of the rendered table."""
    names = table.attrs["metrics"]
    has_delta = bool(table.attrs["baselines"])
    header = ["setting" if table.attrs.get("labelled") else ", ".join(table.attrs["fields"])]
    header += [metric_label(n) for n in names]
    header += [f"Δ {metric_label(names[0])}"] if has_delta else []
    header += table.attrs["paper"]
    rows, bold = [], []
    for key, row in table.iterrows():
        cells = [str(row["label"])] + [_cell(row[f"{n} mean"], row[f"{n} std"], int(row[f"{n} n"]), n) for n in names]
        flags = [False] + [bool(row[f"{n} best"]) for n in names]
        if has_delta:
            base = table.attrs["baselines"].get(key)
            delta = row[f"{names[0]} delta"]
            cells.append("baseline" if base == key else ("" if pd.isna(delta) else _number(delta, names[0], signed=True)))
            flags.append(False)
        for column in table.attrs["paper"]:
            value = row[column]
            cells.append("" if pd.isna(value) else f"{value:.1f}")
            flags.append(False)
        rows.append(cells)
        bold.append(flags)
    return header, rows, bold


def _markdown(caption: str, header, rows, bold) -> str:
    def clean(text: str) -> str:
        return text.replace("|", "\\|")

    body = [[f"**{clean(c)}**" if b and c else clean(c) for c, b in zip(cells, flags)] for cells, flags in zip(rows, bold)]
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    align = ["-" * max(3, w - 1) + ":" if i else "-" * max(3, w) for i, w in enumerate(widths)]
    lines = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
             for cells in [header, *body]]
    lines.insert(1, "| " + " | ".join(a.rjust(w, "-") for a, w in zip(align, widths)) + " |")
    return caption + "\n\n" + "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "–": "--", "—": "---"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _latex(caption: str, header, rows, bold) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + _latex_escape(caption) + "}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\hline"]
    for cells, flags in zip(rows, bold):
        lines.append(" & ".join(r"\textbf{" + _latex_escape(c) + "}" if b and c else _latex_escape(c)
                                for c, b in zip(cells, flags)) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _html(caption: str, header, rows, bold) -> str:
    lines = ["<table>", f"<caption>{html.escape(caption)}</caption>",
             "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for cells, flags in zip(rows, bold):
        tds = "".join(f"<td><b>{html.escape(c)}</b></td>" if b and c else f"<td>{html.escape(c)}</td>"
                      for c, b in zip(cells, flags))
        lines.append(f"<tr>{tds}</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


def _csv(caption: str, table: pd.DataFrame) -> str:
    """The numbers as stored (not rounded, recall in 0..1), the caption as a `#` comment line."""
    buffer = io.StringIO()
    buffer.write("# " + caption.replace("\n", " ") + "\n")
    table.to_csv(buffer, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()


def render_table(store: str | Path | ExperimentData, experiment: str | None = None, fmt: str = "md",
                 metrics: Iterable[str] | str | None = None, sweep: str | None = None) -> str:
    """The experiment's table as text: a caption line, then the table (md | latex | html | csv).
    `store` may also be an already loaded ExperimentData (experiment and sweep are then ignored)."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown table format {fmt!r}; one of {', '.join(FORMATS)}")
    data = store if isinstance(store, ExperimentData) else load_experiment(store, experiment, sweep=sweep)
    table = experiment_table(data, metrics)
    caption = _caption(data, table, data.with_status(("completed",)))
    if fmt == "csv":
        return _csv(caption, table)
    header, rows, bold = _grid(table)
    return {"md": _markdown, "latex": _latex, "html": _html}[fmt](caption, header, rows, bold)
