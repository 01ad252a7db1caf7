"""The words tables and plots share, so a row or a metric reads the same in both.

Metrics: a stored name (`best_test_recall@1`, `cluster_seconds`) -> its short label (R@1,
cluster s), whether it is a fraction shown in % or a time, and whether more is better.

Rows: the card's `rows` fields (aliases such as K resolved), a trial's row key (its row field
values joined by commas: "kmeans", "triplet,kmeans"), the order of the keys, their labels and the
baseline row each is compared with. The aliases are the card's `aliases` mapping ({"K":
"num_learners", ...}, written by the platform); stores older than it get ALIASES.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .schema import BEST_EPOCH, BEST_PREFIX, FINAL_PREFIX, best_column, spec_column
from .store import ExperimentData, StoreError

ALIASES = {"K": "num_learners", "T": "recluster_every", "m": "samples_per_class", "d": "embedding_dim"}
TRIAL_METRICS = ("wall_seconds", "train_seconds", "cluster_seconds", "eval_seconds", "epochs_done", BEST_EPOCH)
_PERCENT = re.compile(r"(recall@|nmi|map@|precision@|accuracy)")


# ------------------------------------------------------------------------------ metric names
def base_metric(name: str) -> str:
    """`best_test_recall@1` / `final_test_recall@1` -> `test_recall@1`."""
    for prefix in (BEST_PREFIX, FINAL_PREFIX):
        if name.startswith(prefix) and name != BEST_EPOCH:
            return name[len(prefix) :]
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
    names = [
        c.removeprefix(BEST_PREFIX) for c in trials.columns if c.startswith(BEST_PREFIX) and c != BEST_EPOCH and trials[c].notna().any()
    ]
    names += [c for c in TRIAL_METRICS if c in trials and trials[c].notna().any()]
    return names


def metric_column(trials: pd.DataFrame, name: str) -> str | None:
    """The trials' column holding metric `name` (None when no trial recorded it)."""
    for column in (best_column(name), name):
        if column in trials and not (column == BEST_EPOCH and name != BEST_EPOCH) and trials[column].notna().any():
            return column
    return None


def metric_values(trials: pd.DataFrame, name: str) -> pd.Series:
    """Each trial's value of metric `name` (NaN where it has none)."""
    column = metric_column(trials, name)
    if column is None:
        raise StoreError(f"no trial recorded metric {name!r}; available: {', '.join(available_metrics(trials)) or 'none'}")
    return pd.to_numeric(trials[column], errors="coerce")


# ------------------------------------------------------------------------------- row fields
def aliases(data: ExperimentData) -> dict[str, str]:
    """Alias -> RunSpec field: the card's own mapping, else the one stores before it used."""
    return {str(k): str(v) for k, v in (data.card.get("aliases") or ALIASES).items()}


def field_name(data: ExperimentData, name: str) -> str:
    """A field as cards and plot settings may name it (K) -> the RunSpec field (num_learners)."""
    return aliases(data).get(name, name)


def short_name(data: ExperimentData, field: str) -> str:
    """num_learners -> K (the field itself when it has no alias)."""
    return {v: k for k, v in aliases(data).items()}.get(field, field)


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


def key_of(value: Any) -> str:
    """A row as a card names it (4, [triplet, kmeans], {loss: triplet, ...}) -> its row key."""
    if isinstance(value, (list, tuple)):
        return ",".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(fmt_value(v) for v in value.values())
    return fmt_value(value)


def row_fields(data: ExperimentData) -> list[str]:
    """The fields a table row stands for (the card's `rows`; one row per trial when it has none)."""
    return [field_name(data, f) for f in data.rows] or ["trial_id"]


def field_column(trials: pd.DataFrame, field: str) -> str:
    """The trials' column of a RunSpec field (spec_<field>) or of a trial column (trial_id)."""
    for column in (spec_column(field), field):
        if column in trials:
            return column
    raise StoreError(f"the trials have no column for field {field!r} (expected {spec_column(field)})")


def row_values(data: ExperimentData, trials: pd.DataFrame) -> pd.DataFrame:
    """One text column per row field, for every trial."""
    return pd.DataFrame({f: [fmt_value(v) for v in trials[field_column(trials, f)].tolist()] for f in row_fields(data)}, index=trials.index)


def join_keys(values: pd.DataFrame) -> pd.Series:
    """Field values (text columns) -> keys joined by commas, one per row ("" without columns)."""
    if not len(values):
        return pd.Series([], index=values.index, dtype=object)
    return values.astype(str).agg(",".join, axis=1)


def row_keys(data: ExperimentData, trials: pd.DataFrame) -> pd.Series:
    """Each trial's row key: its row field values joined by commas ("kmeans", "triplet,kmeans")."""
    return join_keys(row_values(data, trials))


def _natural(key: str) -> tuple:
    parts = []
    for part in key.split(","):
        try:
            parts.append((0, float(part), ""))
        except ValueError:
            parts.append((1, 0.0, part))
    return tuple(parts)


def ordered_keys(data: ExperimentData, keys: Iterable[str], fields: list[str] | None = None) -> list[str]:
    """The table's `order` first, then the grid's order of the row fields, then natural order.
    fields: the fields the keys stand for (default: all row fields)."""
    keys = list(dict.fromkeys(keys))
    fields = row_fields(data) if fields is None else fields
    ranked: list[str] = [key_of(k) for k in data.table.get("order") or []] if fields == row_fields(data) else []
    grid = data.card.get("grid") or {}
    if all(f in grid for f in fields):
        ranked += [",".join(fmt_value(v) for v in combo) for combo in itertools.product(*(grid[f] for f in fields))]
    rank = {k: i for i, k in reversed(list(enumerate(ranked)))}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), _natural(k)))


def value_label(data: ExperimentData, value: str) -> str:
    """The table's label for a row key or one field value (kmeans -> "K-means ..."), else itself."""
    labels = {key_of(k): str(v) for k, v in (data.table.get("labels") or {}).items()}
    return labels.get(value, value)


def named_label(data: ExperimentData, fields: list[str], key: str) -> str:
    """A key of `fields` with its fields named, for legends: `K=4`, `loss=margin, grouping=kmeans`."""
    parts = key.split(",") if len(fields) > 1 else [key]
    return ", ".join(f"{short_name(data, f)}={value_label(data, v)}" for f, v in zip(fields, parts))


def row_label(data: ExperimentData, key: str, named: bool = False) -> str:
    """The table's label for a row key, else its values (joined by ", "); named: with their
    fields (`K=4`), for a legend that has no header naming them."""
    labelled = value_label(data, key)
    if labelled != key:
        return labelled
    fields = row_fields(data)
    if named:
        return named_label(data, fields, key)
    return ", ".join(value_label(data, part) for part in key.split(",")) if len(fields) > 1 else key


def _baseline_mapping(data: ExperimentData) -> dict[str, str] | None:
    """The card's baseline as field -> value text (None without a baseline)."""
    baseline = data.table.get("baseline")
    if baseline is None:
        return None
    fields = row_fields(data)
    if isinstance(baseline, dict):
        return {field_name(data, str(k)): fmt_value(v) for k, v in baseline.items()}
    if isinstance(baseline, (list, tuple)):
        return dict(zip(fields, map(fmt_value, baseline)))
    parts = fmt_value(baseline).split(",") if len(fields) > 1 else [fmt_value(baseline)]
    return dict(zip(fields, parts)) if len(parts) == len(fields) else {fields[0]: fmt_value(baseline)}


def baseline_text(data: ExperimentData) -> str:
    """The baseline as a caption names it: `grouping=none` or `1`."""
    baseline = data.table.get("baseline")
    if isinstance(baseline, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in baseline.items())
    return key_of(baseline)


def baseline_key(data: ExperimentData, key: str) -> str | None:
    """The key of the row `key` is compared with: the card's baseline row; a mapping such as
    {grouping: none} for multi-field rows keeps the other fields (triplet,kmeans -> triplet,none)."""
    mapping = _baseline_mapping(data)
    fields = row_fields(data)
    if mapping is None or not set(mapping) & set(fields):
        return None
    values = dict(zip(fields, key.split(",") if len(fields) > 1 else [key]))
    values.update({f: v for f, v in mapping.items() if f in fields})
    return ",".join(values[f] for f in fields)
