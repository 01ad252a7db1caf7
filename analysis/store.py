"""Reading the results store: one experiment's card, trials and epochs.

    STORE/<sweep>/experiment.json        the experiment card (rows, metric, table, plot, ...)
    STORE/<sweep>/trials/*.parquet       one row per trial
    STORE/<sweep>/epochs/*.parquet       one row per (trial, epoch)
    STORE/_ray/...                       Ray's own files (never read)

Sweep ids end in a timestamp (`<experiment>-<preset>-YYYYmmdd-HHMMSS`); the newest sweep of an
experiment is the default. Files are read with pyarrow and their schemas unified, so trials
written by different versions (differing column sets, int vs float) still combine. Only pandas,
pyarrow and the standard library are used here: the store is all analysis needs.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

CARD = "experiment.json"
_STAMP = re.compile(r"(\d{8}-\d{6})$")


class StoreError(ValueError):
    """A results store that is missing, empty or not what was asked for (one readable line)."""


@dataclasses.dataclass
class ExperimentData:
    """One experiment as stored: its card, trials and epochs (all statuses), and the sweeps read."""

    card: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    sweeps: list[str]
    store: Path | None = None

    @property
    def name(self) -> str:
        return str(self.card.get("experiment", ""))

    @property
    def preset(self) -> str:
        return str(self.card.get("preset") or "")

    @property
    def rows(self) -> list[str]:
        rows = self.card.get("rows") or []
        return [rows] if isinstance(rows, str) else list(rows)

    @property
    def metric(self) -> str:
        return str(self.card.get("metric") or "val_recall@1")

    @property
    def mode(self) -> str:
        return str(self.card.get("mode") or "max")

    @property
    def table(self) -> dict[str, Any]:
        return dict(self.card.get("table") or {})

    @property
    def plot(self) -> dict[str, Any]:
        return dict(self.card.get("plot") or {})

    def with_status(self, status=("completed",)) -> pd.DataFrame:
        """The trials whose status is one of `status` (all trials for None)."""
        if status is None or "status" not in self.trials:
            return self.trials
        status = (status,) if isinstance(status, str) else tuple(status)
        return self.trials[self.trials["status"].isin(status)]


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def _sweep_order(sweep: str) -> tuple[str, str]:
    match = _STAMP.search(sweep)
    return (match.group(1) if match else "", sweep)


def _read_card(directory: Path) -> dict[str, Any]:
    try:
        card = json.loads((directory / CARD).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"{directory / CARD}: cannot read the experiment card ({error})") from None
    if not isinstance(card, dict):
        raise StoreError(f"{directory / CARD}: the experiment card is not a JSON object")
    return card


def _check_store(store: str | Path) -> Path:
    root = Path(store)
    if not root.exists():
        raise StoreError(f"results store {root} does not exist (dncml sweep ... --storage {root} creates it)")
    if not root.is_dir():
        raise StoreError(f"results store {root} is not a directory")
    return root


def _scan(root: Path) -> tuple[dict[str, list[str]], dict[str, dict], list[str]]:
    """experiment -> sweep ids (oldest first), sweep id -> card, and sweep dirs without a card."""
    experiments: dict[str, list[str]] = {}
    cards: dict[str, dict] = {}
    uncarded: list[str] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        if not (directory / CARD).is_file():
            if (directory / "trials").is_dir() or (directory / "epochs").is_dir():
                uncarded.append(directory.name)
            continue
        card = _read_card(directory)
        name = str(card.get("experiment") or directory.name)
        cards[directory.name] = card
        experiments.setdefault(name, []).append(directory.name)
    for sweeps in experiments.values():
        sweeps.sort(key=_sweep_order)
    return experiments, cards, uncarded


def list_experiments(store: str | Path) -> dict[str, list[str]]:
    """Experiment name -> its sweep ids in the store, oldest first (sweep dirs with a card only)."""
    return _scan(_check_store(store))[0]


def read_parquet_dir(directory: Path) -> pd.DataFrame:
    """Every visible Parquet file of a directory as one DataFrame, schemas unified (missing
    columns -> null, int64 + double -> double); an empty DataFrame when there is none."""
    files = sorted(p for p in directory.glob("*.parquet") if _visible(p)) if directory.is_dir() else []
    if not files:
        return pd.DataFrame()
    try:
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        table = pads.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
        return table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # Columns whose types cannot be promoted (a string and a number): pandas holds them as objects.
        return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True, sort=False)


def _require_completed(trials: pd.DataFrame, experiment: str, sweeps: list[str]) -> None:
    where = sweeps[0] if len(sweeps) == 1 else f"{len(sweeps)} sweeps ({', '.join(sweeps)})"
    if trials.empty or "status" not in trials:
        raise StoreError(f"experiment {experiment!r}: no trials recorded yet in {where}")
    if (trials["status"] == "completed").any():
        return
    counts = trials["status"].value_counts()
    summary = ", ".join(f"{int(n)} {status}" for status, n in counts.items())
    message = f"experiment {experiment!r}: no completed trials in {where} ({summary})"
    errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=object)
    errors = errors[errors.astype(str).str.strip() != ""]
    if len(errors):
        first = str(errors.iloc[0]).strip().splitlines()
        message += f"; first error: {first[-1] if first else ''}"[:600]
    raise StoreError(message)


def load_experiment(store: str | Path, experiment: str, sweep: str | None = None,
                    require_completed: bool = True) -> ExperimentData:
    """One experiment's card, trials and epochs.

    sweep: None -> the newest sweep of the experiment; "all" -> every sweep of the experiment with
    the newest one's preset, concatenated (the newest sweep's card is used); otherwise a sweep id.
    require_completed: raise StoreError unless at least one trial completed.
    """
    root = _check_store(store)
    experiments, cards, uncarded = _scan(root)
    if sweep not in (None, "all") and sweep not in cards:
        if (root / sweep).is_dir():
            raise StoreError(f"sweep {sweep!r} in {root} has no {CARD} (was it written by `dncml sweep`?)")
        known = ", ".join(experiments.get(experiment, [])) or "none"
        raise StoreError(f"no sweep {sweep!r} in {root}; sweeps of {experiment!r}: {known}")
    if not experiments:
        extra = f" (sweep dirs without {CARD}: {', '.join(uncarded)})" if uncarded else ""
        raise StoreError(f"results store {root} holds no sweeps{extra}")
    if experiment not in experiments:
        present = ", ".join(f"{name} ({len(s)} sweep{'s' if len(s) > 1 else ''})" for name, s in sorted(experiments.items()))
        extra = f"; sweep dirs without {CARD}: {', '.join(uncarded)}" if uncarded else ""
        raise StoreError(f"no sweep of experiment {experiment!r} in {root}; it holds: {present}{extra}")

    if sweep is None:
        chosen = [experiments[experiment][-1]]
    elif sweep == "all":
        newest = experiments[experiment][-1]
        preset = cards[newest].get("preset")
        chosen = [s for s in experiments[experiment] if cards[s].get("preset") == preset]
    else:
        if str(cards[sweep].get("experiment") or sweep) != experiment:
            raise StoreError(f"sweep {sweep!r} belongs to experiment {cards[sweep].get('experiment')!r}, not {experiment!r}")
        chosen = [sweep]

    trials = [read_parquet_dir(root / s / "trials") for s in chosen]
    epochs = [read_parquet_dir(root / s / "epochs") for s in chosen]
    trials_df = _concat(trials, chosen)
    epochs_df = _concat(epochs, chosen)
    if require_completed:
        _require_completed(trials_df, experiment, chosen)
    card = dict(cards[chosen[-1]])
    card.setdefault("experiment", experiment)
    return ExperimentData(card=card, trials=trials_df, epochs=epochs_df, sweeps=chosen, store=root)


def _concat(frames: list[pd.DataFrame], sweeps: list[str]) -> pd.DataFrame:
    for frame, sweep in zip(frames, sweeps):
        if len(frame) and "sweep" not in frame:
            frame["sweep"] = sweep
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True, sort=False)
