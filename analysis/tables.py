"""An experiment's table: one row per setting (the card's `rows` fields), mean ± std over seeds.

`experiment_table` gives the numbers as a DataFrame (metrics as stored: recall, NMI and MAP@R in
0..1, timings in seconds); `render_table` writes it as Markdown, LaTeX, HTML or CSV with a
caption, recall/NMI/MAP@R shown in % (as the paper reports them), the best cell per column in
bold, a Δ column against the baseline row and the paper's numbers beside ours.

A trial's value of a metric such as `test_recall@1` is its `best_test_recall@1` column: the value
at the epoch the sweep's selection metric (validation) chose. Trial columns such as
`cluster_seconds` or `wall_seconds` are used as they are.

Δ is paired: seeds share their data order and initial weights across settings, so the
difference within a seed is far less noisy than the difference of two means. Each trial pairs
with the baseline row's trial of the same sweep and seed (else of the same seed, averaged over
the baseline's sweeps); Δ is the mean difference with its 95 % t-interval, and a difference
whose interval spans 0 is marked as within noise. The table holds Δ for every metric; Markdown,
LaTeX and HTML show it for the first metric only (an interval per metric would double the
width), CSV has them all.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import BEST_EPOCH, BEST_PREFIX, COMPLETED, PARTIAL, STATUS, spec_column
from .store import ExperimentData, StoreError, load_experiment
from .vocabulary import (
    available_metrics,
    baseline_key,
    baseline_text,
    field_name,
    is_percent,
    is_seconds,
    key_of,
    metric_column,
    metric_label,
    metric_mode,
    metric_values,
    ordered_keys,
    row_fields,
    row_label,
    row_values,
)

FORMATS = ("md", "latex", "html", "csv")


# ---------------------------------------------------------------------------------- metrics
def resolve_metrics(data: ExperimentData, trials: pd.DataFrame, metrics: Iterable[str] | str | None) -> list[str]:
    """Metrics asked for (each must be recorded) or the card's (those recorded)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics:
        names = [m if m == BEST_EPOCH else m.removeprefix(BEST_PREFIX) for m in metrics]
        missing = [m for m in names if metric_column(trials, m) is None]
        if missing:
            raise StoreError(
                f"no trial of {data.name!r} recorded metric{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))}; available: {', '.join(available_metrics(trials)) or 'none'}"
            )
        return names
    wanted = list(data.table.get("metrics") or []) or [data.metric]
    names = [m for m in wanted if metric_column(trials, m) is not None]
    if not names and metric_column(trials, data.metric) is not None:
        names = [data.metric]
    if not names:
        raise StoreError(
            f"no trial of {data.name!r} recorded any of {', '.join(wanted)}; available: {', '.join(available_metrics(trials)) or 'none'}"
        )
    return names


# ------------------------------------------------------------------------------- intervals
@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its 95 % t-interval over n values (low and high NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def noise(self) -> bool:
        """Within noise: no interval (n < 2), or one that spans 0."""
        return self.n < 2 or self.low <= 0 <= self.high


def t_interval(values: Iterable[float]) -> Interval:
    """Mean ± t(0.975, n-1) * sd / sqrt(n), sd with ddof 1: the seeds are few, so a normal
    interval would be too narrow."""
    values = np.asarray([v for v in values if pd.notna(v)], dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    from scipy import stats  # here: it costs every `dncml table` most of a second; only intervals need it

    half = float(stats.t.ppf(0.975, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def seed_cells(trials: pd.DataFrame, values: pd.Series, groups: pd.Series) -> dict[str, pd.Series]:
    """`values` averaged per (sweep, seed) within each group (row key): group -> a Series indexed
    by (sweep, seed), the units paired with the baseline's. Trials without a seed are left out."""
    if spec_column("seed") not in trials:
        return {}
    sweeps = trials["sweep"].astype(str) if "sweep" in trials else pd.Series("", index=trials.index)
    frame = pd.DataFrame({"group": groups, "sweep": sweeps, "seed": trials[spec_column("seed")], "value": values})
    means = frame.dropna(subset=["seed", "value"]).groupby(["group", "sweep", "seed"])["value"].mean()
    return {group: cells.droplevel("group") for group, cells in means.groupby(level="group")}


def paired_delta(cells: pd.Series, base: pd.Series) -> Interval:
    """Row minus baseline, paired: each (sweep, seed) cell of the row with the baseline's cell of
    the same sweep and seed, else with the baseline's mean for that seed over its sweeps (pooled
    sweeps need not have run every setting); the t-interval of the differences."""
    if base.empty:
        return t_interval([])
    by_seed = base.groupby(level="seed").mean()
    differences = [value - base.get((sweep, seed), by_seed.get(seed, math.nan)) for (sweep, seed), value in cells.items()]
    return t_interval(differences)


def partial_note(statuses: pd.Series) -> str:
    """ " (partial: 2 running)" for a row holding partial trials, "" for one that does not."""
    counts = statuses.value_counts().reindex(PARTIAL).dropna()
    return f" (partial: {', '.join(f'{int(n)} {s}' for s, n in counts.items())})" if len(counts) else ""


# ---------------------------------------------------------------------------------- table
def with_running(data: ExperimentData, include_running: bool) -> ExperimentData:
    """The data, showing the partial trials when asked here or when it was loaded so."""
    return dataclasses.replace(data, include_running=data.include_running or include_running)


def experiment_table(
    data: ExperimentData, metrics: Iterable[str] | str | None = None, status=(COMPLETED,), include_running: bool = False
) -> pd.DataFrame:
    """One row per setting (index: the row key), in the table's order. Columns: `label`, the row
    fields, `trials` (and `partial`, the running or interrupted ones among them, with
    include_running), then per metric `<m> mean`, `<m> std` (over seeds, ddof 1), `<m> n`, the
    paired difference from the baseline row `<m> delta` with its 95 % t-interval `<m> delta
    low` / `<m> delta high`, its number of pairs `<m> delta n` and `<m> delta noise` (True when the
    interval spans 0 or there is none: n < 2; NaN deltas without a baseline), and `<m> best`
    (True on the best row, by max or min), then `paper <label>` for the paper's numbers (in %).
    Values are as stored (recall in 0..1, seconds). `table.attrs` holds metrics, fields, baseline.
    include_running (or data loaded with it): also the running and interrupted trials, at their
    best epoch so far; their rows' labels say so ("kmeans (partial: 1 running)")."""
    data = with_running(data, include_running)
    trials = data.shown(status)
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
    if data.include_running:
        statuses = trials[STATUS].groupby(keys)
        table["partial"] = statuses.agg(lambda s: int(s.isin(PARTIAL).sum())).reindex(order).astype(int)
        table["label"] += statuses.agg(partial_note).reindex(order)
    searched = [f for f in (field_name(data, p) for p in data.card.get("search") or {}) if spec_column(f) in trials and f not in fields]
    for field in searched:  # a search's rows are its trials: show what each sampled
        table[field] = trials.groupby(keys)[spec_column(field)].first().reindex(order)
    bases = {k: baseline_key(data, k) for k in order}
    for name in names:
        numbers = metric_values(trials, name)
        grouped = numbers.groupby(keys)
        mean = grouped.mean().reindex(order)
        table[f"{name} mean"] = mean
        table[f"{name} std"] = grouped.std(ddof=1).reindex(order)
        table[f"{name} n"] = grouped.count().reindex(order).fillna(0).astype(int)
        cells = seed_cells(trials, numbers, keys)
        empty = pd.Series(dtype=float)
        deltas = [
            paired_delta(cells.get(k, empty), cells.get(bases[k], empty)) if bases[k] in table.index else t_interval([]) for k in order
        ]
        table[f"{name} delta"] = [d.mean for d in deltas]
        table[f"{name} delta low"] = [d.low for d in deltas]
        table[f"{name} delta high"] = [d.high for d in deltas]
        table[f"{name} delta n"] = [d.n for d in deltas]
        table[f"{name} delta noise"] = [d.noise for d in deltas]
        target = mean.max() if metric_mode(name, data) == "max" else mean.min()
        table[f"{name} best"] = mean.notna() & ((mean - target).abs() <= 1e-12)
    paper = {key_of(k): v for k, v in (data.table.get("paper") or {}).items() if isinstance(v, dict)}
    labels = list(dict.fromkeys(label for row in paper.values() for label in row))
    for label in labels:
        table[f"paper {label}"] = [pd.to_numeric((paper.get(k) or {}).get(label), errors="coerce") for k in order]
    table.attrs.update(
        {
            "experiment": data.name,
            "metrics": names,
            "fields": fields,
            "labelled": bool(data.table.get("labels")),
            "baselines": {k: b for k, b in bases.items() if b in table.index},
            "searched": searched,
            "paper": [f"paper {label}" for label in labels],
        }
    )
    return table


def paper_comparison(data: ExperimentData, metric: str = "test_recall@1", paper_column: str | None = None) -> pd.DataFrame:
    """Ours beside the paper's, both in %: `ours`, `ours std`, `ours Δ` (paired by seed vs the
    baseline row) with its 95 % t-interval `ours Δ low` / `ours Δ high` over `ours Δ n` seeds,
    `paper`, `paper Δ`. paper_column: the paper's column (default: the metric's label, e.g. R@1)."""
    table = experiment_table(data, [metric])
    column = f"paper {paper_column or metric_label(metric)}"
    scale = 100.0 if is_percent(metric) else 1.0
    out = pd.DataFrame(index=table.index)
    out["label"] = table["label"]
    out["ours"] = table[f"{metric} mean"] * scale
    out["ours std"] = table[f"{metric} std"] * scale
    for suffix in ("", " low", " high"):
        out[f"ours Δ{suffix}"] = table[f"{metric} delta{suffix}"] * scale
    out["ours Δ n"] = table[f"{metric} delta n"]
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


def _cell(mean: float, std: float, n: int, name: str, full: int) -> str:
    """`62.0 ± 2.8`, with `(n=2)` only where fewer trials than the table's usual `full` count
    made it (the caption states that count once)."""
    if pd.isna(mean):
        return "–"
    text = _number(mean, name)
    if n > 1 and pd.notna(std):
        text += f" ± {_number(std, name)}"
    return f"{text} (n={n})" if n < full else text


def _caption(data: ExperimentData, table: pd.DataFrame, trials: pd.DataFrame, stored: bool = False) -> str:
    """The table's caption; stored: of the CSV, whose numbers are as stored (no %, no bold)."""
    names = table.attrs["metrics"]
    sweeps = data.sweeps[0] if len(data.sweeps) == 1 else f"{len(data.sweeps)} sweeps"
    datasets = sorted({str(v) for v in trials.get(spec_column("dataset"), pd.Series(dtype=object)).dropna()})
    statuses = data.trials[STATUS] if STATUS in data.trials else pd.Series(dtype=object)
    shown = statuses[statuses.index.isin(trials.index)].value_counts().sort_index(key=lambda s: s != COMPLETED)
    others = statuses[~statuses.index.isin(trials.index)].value_counts()
    seeds = _range(table["trials"])
    parts = [
        f"{data.name} (preset {data.preset or 'n/a'}; {sweeps}; dataset {', '.join(datasets) or 'n/a'}): "
        + ", ".join(f"{int(n)} {s}" for s, n in shown.items())
        + f" trials, {seeds} seed{'' if seeds == '1' else 's'} per row"
        + (f" ({', '.join(f'{int(n)} {s}' for s, n in others.items())} not shown)" if len(others) else "")
        + f"; each trial's values at its epoch with the best {data.metric} ({data.mode})."
    ]
    if "partial" in table and table["partial"].any():
        parts.append(f"Rows marked partial hold {' or '.join(PARTIAL)} trials, at their best epoch so far.")
    if stored:
        parts.append("Values as stored: recall, NMI and MAP@R as fractions (the paper's numbers too), times in seconds.")
    else:
        if any(is_percent(n) for n in names):
            parts.append("Recall, NMI and MAP@R in % (mean ± std over seeds).")
        full = _full_count(table)
        if full:
            parts.append(f"Each cell over {full} trial{'s' if full > 1 else ''} unless marked (n=...).")
        if any(is_seconds(n) for n in names):
            parts.append("Times in seconds.")
        parts.append("Bold: best per column.")
    if table.attrs["baselines"]:
        first = names[0]
        pairs = table.loc[[k for k, b in table.attrs["baselines"].items() if k != b], f"{first} delta n"]
        over = _range(pairs[pairs > 0]) or "no"
        parts.append(
            f"Δ {metric_label(first)}: minus the baseline row ({baseline_text(data)}), paired by seed: "
            f"mean [95 % t-interval] over {over} seed{'' if over == '1' else 's'}"
            + (", in points" if is_percent(first) and not stored else "")
            + "; ≈: the interval spans 0 (within noise)"
            + ("; the CSV has Δ for every metric." if len(names) > 1 and not stored else ".")
        )
    if _paper_columns(table) or (stored and table.attrs["paper"]):
        source = data.table.get("paper_dataset")
        parts.append("Paper columns: the paper's numbers" + (f" on {source}" if source else "") + ("." if stored else " (%)."))
    caption = " ".join(parts)
    if data.skipped:
        files = f"{len(data.skipped)} unreadable file{'s' if len(data.skipped) > 1 else ''}"
        caption += f"\nSkipped {files}: " + "; ".join(data.skipped)
    return caption


def _range(counts: pd.Series) -> str:
    """Counts as a caption states them: "3", "2-3" ("" for none)."""
    values = sorted(set(int(n) for n in counts))
    if not values:
        return ""
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _full_count(table: pd.DataFrame) -> int:
    """The most trials any metric cell of the table has: a cell with fewer says so."""
    counts = [int(n) for name in table.attrs["metrics"] for n in table[f"{name} n"]]
    return max(counts, default=0)


def _paper_columns(table: pd.DataFrame) -> dict[str, str]:
    """Shown metric -> the paper's column it matches (`test_recall@1` -> `paper R@1`): only test
    metrics, only where the paper has that column; the paper's other columns are not shown."""
    paper = set(table.attrs["paper"])
    return {n: f"paper {metric_label(n)}" for n in table.attrs["metrics"] if n.startswith("test_") and f"paper {metric_label(n)}" in paper}


def _grid(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, text cells and bold flags of the rendered table: each metric, the paper's
    matching column right beside it, then Δ of the first metric."""
    names = table.attrs["metrics"]
    has_delta = bool(table.attrs["baselines"])
    paper = _paper_columns(table)
    full = _full_count(table)
    header = ["setting" if table.attrs.get("labelled") else ", ".join(table.attrs["fields"])]
    searched = table.attrs.get("searched", [])
    header += searched
    for n in names:
        header += [metric_label(n)] + ([paper[n]] if n in paper else [])
    header += [f"Δ {metric_label(names[0])}"] if has_delta else []
    rows, bold = [], []
    for key, row in table.iterrows():
        cells, flags = [str(row["label"])] + [_sampled(row[f]) for f in searched], [False] * (1 + len(searched))
        for n in names:
            cells.append(_cell(row[f"{n} mean"], row[f"{n} std"], int(row[f"{n} n"]), n, full))
            flags.append(bool(row[f"{n} best"]))
            if n in paper:
                value = row[paper[n]]
                cells.append("" if pd.isna(value) else f"{value:.1f}")
                flags.append(False)
        if has_delta:
            base = table.attrs["baselines"].get(key)
            cells.append("" if base is None else "baseline" if base == key else _delta_cell(row, names[0]))
            flags.append(False)
        rows.append(cells)
        bold.append(flags)
    return header, rows, bold


def _sampled(value) -> str:
    """A sampled hyper-parameter as its cell shows it: floats to 3 significant digits."""
    if pd.isna(value):
        return ""
    return f"{value:.3g}" if isinstance(value, float) and not float(value).is_integer() else str(value)


def _delta_cell(row: pd.Series, name: str) -> str:
    """`+0.3 [-0.5, +1.1] ≈`: the paired Δ, its interval, ≈ when that spans 0."""
    n = int(row[f"{name} delta n"])
    if n == 0:
        return "no common seed"
    text = _number(row[f"{name} delta"], name, signed=True)
    if n == 1:
        return f"{text} (n=1, no interval)"
    low, high = (_number(row[f"{name} delta {end}"], name, signed=True) for end in ("low", "high"))
    return f"{text} [{low}, {high}]" + (" ≈" if row[f"{name} delta noise"] else "")


def _md_escape(text: str) -> str:
    """A cell or caption as Markdown text: HTML in a label is shown, not rendered (Jupyter's
    Markdown passes raw HTML through), and `|` does not split the cell."""
    return html.escape(text, quote=False).replace("|", "\\|")


def _markdown(caption: str, header, rows, bold) -> str:
    body = [[f"**{_md_escape(c)}**" if b and c else _md_escape(c) for c, b in zip(cells, flags)] for cells, flags in zip(rows, bold)]
    header = [_md_escape(h) for h in header]
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    align = ["-" * max(3, w - 1) + ":" if i else "-" * max(3, w) for i, w in enumerate(widths)]
    lines = [
        "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
        for cells in [header, *body]
    ]
    lines.insert(1, "| " + " | ".join(a.rjust(w, "-") for a, w in zip(align, widths)) + " |")
    return _md_escape(caption) + "\n\n" + "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "≈": r"$\approx$",
    "–": "--",
    "—": "---",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _styler(header, rows, bold, css: str, escape):
    """The rendered cells as a pandas Styler: no index, `css` on the bold cells."""
    frame = pd.DataFrame([[escape(c) for c in cells] for cells in rows], columns=[escape(h) for h in header])
    flags = pd.DataFrame(np.where(np.array(bold, dtype=bool).reshape(frame.shape), css, ""), index=frame.index, columns=frame.columns)
    return frame.style.hide(axis="index").apply(lambda _: flags, axis=None)


def _short_caption(data: ExperimentData, table: pd.DataFrame) -> str:
    fields = ", ".join(table.attrs["fields"]) or "setting"
    return f"{data.name}: {', '.join(metric_label(n) for n in table.attrs['metrics'])} by {fields}"


def _provenance(data: ExperimentData) -> list[str]:
    """Where the table's numbers come from, for a comment at its top."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("dncml")
    except PackageNotFoundError:
        release = "unknown"
    store = f" in {data.store}" if data.store else ""
    return [
        f"dncml {release}, table of experiment {data.name}{store}",
        f"sweeps: {', '.join(data.sweeps)}; {len(data.trials)} trial rows (statuses: "
        + ", ".join(f"{s} {n}" for s, n in data.trials[STATUS].value_counts().items())
        + ")",
    ]


def _latex(data: ExperimentData, table: pd.DataFrame, caption: str, header, rows, bold) -> str:
    """booktabs rules, `\\label{tab:<experiment>}`, the caption with a short one for the list of
    tables, the provenance as `%` comments; needs `\\usepackage{booktabs}`."""
    styler = _styler(header, rows, bold, "textbf: --rwrap;", _latex_escape)
    body = styler.to_latex(
        caption=(_latex_escape(caption.replace("\n", " ")), _latex_escape(_short_caption(data, table))),
        label=f"tab:{data.name}",
        hrules=True,
        position="t",
        position_float="centering",
        column_format="l" + "r" * (len(header) - 1),
    )
    return "".join(f"% {line}\n" for line in _provenance(data)) + "% needs \\usepackage{booktabs}\n" + body


def _html(data: ExperimentData, caption: str, header, rows, bold) -> str:
    styler = _styler(header, rows, bold, "font-weight: bold;", html.escape)
    attributes = f'class="dncml-table" data-experiment="{html.escape(data.name)}"'
    styler = styler.set_caption(html.escape(caption)).set_table_attributes(attributes)
    comment = "".join(f"<!-- {html.escape(line).replace('--', '- -')} -->\n" for line in _provenance(data))
    return comment + styler.to_html(table_uuid=_uuid(data.name))


def _uuid(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _neutralise(value):
    """A text cell a spreadsheet would run as a formula (`=HYPERLINK(...)`, `@SUM`, `-2+3`),
    prefixed with `'` (OWASP's advice); numbers, and text that is a number, stay as they are."""
    if not isinstance(value, str) or not value.startswith(_FORMULA):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def _csv(table: pd.DataFrame) -> str:
    """The numbers as stored (not rounded): recall, NMI and MAP@R in 0..1, the paper's numbers
    too (the table holds them in %), times in seconds; no caption line (`pandas.read_csv` reads
    it as is: the caption goes beside it), text cells neutralised against formula injection."""
    out = table.copy()
    for column in table.attrs["paper"]:
        out[column] = out[column] / 100.0
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(_neutralise)
    out.index = out.index.map(_neutralise)
    out.columns = [_neutralise(c) for c in out.columns]
    buffer = io.StringIO()
    out.to_csv(buffer, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()


def table_with_caption(
    store: str | Path | ExperimentData,
    experiment: str | None = None,
    fmt: str = "md",
    metrics: Iterable[str] | str | None = None,
    sweep: str | None = None,
    include_running: bool = False,
) -> tuple[str, str]:
    """(text, caption): the table as `render_table` writes it and its caption on its own (the
    caption a CSV goes with, which the CSV itself leaves out)."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown table format {fmt!r}; one of {', '.join(FORMATS)}")
    data = store if isinstance(store, ExperimentData) else load_experiment(store, experiment, sweep=sweep, include_running=include_running)
    data = with_running(data, include_running)
    table = experiment_table(data, metrics)
    if fmt == "csv":
        return _csv(table), _caption(data, table, data.shown(), stored=True)
    caption = _caption(data, table, data.shown())
    header, rows, bold = _grid(table)
    if fmt == "md":
        return _markdown(caption, header, rows, bold), caption
    if fmt == "latex":
        return _latex(data, table, caption, header, rows, bold), caption
    return _html(data, caption, header, rows, bold), caption


def render_table(store: str | Path | ExperimentData, experiment: str | None = None, **options) -> str:
    """The experiment's table as text (md | latex | html | csv): Markdown with its caption above;
    LaTeX and HTML through pandas' Styler with the caption inside (LaTeX: booktabs rules, a
    `\\label`, a short caption; both: the provenance in a comment); CSV without a caption (see
    `table_with_caption`, whose options, fmt, metrics, sweep and include_running, it takes).
    `store` may also be an already loaded ExperimentData (experiment and sweep are then
    ignored). include_running: also the running and interrupted trials, their rows marked
    partial."""
    return table_with_caption(store, experiment, **options)[0]
