"""`dncml status STORE`: what a results store holds and what is running in it, from the store alone.

Per sweep (and `dncml train` run group): every trial's state, epochs done of its total, the best
value so far of the sweep's selection metric, and for the running ones an ETA from their epoch
times; trials a sweep has not started yet are counted from its card. A trial whose row says
`running` while no process holds the sweep's lease (`STORE/<sweep>/.leases/`) was cut off: it is
shown as `interrupted?`, and `--resume` continues it.
"""

from __future__ import annotations

import math
import os
import time

import pandas as pd
import pyarrow.fs as pafs

from .schema import (
    BEST_EPOCH,
    CARD_FILE,
    COMPLETED,
    EPOCH,
    EPOCH_SECONDS,
    EPOCHS_DIR,
    INTERRUPTED,
    LEASES_DIR,
    RUNNING,
    SPANS,
    STATUS,
    TRIAL_ID,
    TRIALS_DIR,
    ExperimentCard,
    StoreError,
    lease_name,
    read_lease,
    spec_column,
    sweep_order,
    visible,
)
from .store import StoreRoot, _check_store, read_card, read_parquet_dir, selected_epochs


def _live_leases(root: StoreRoot, sweep: str) -> list[dict]:
    """The sweep's leases that count (the store's staleness rule), each with its run's `name`."""
    live = []
    leases = root.listdir(root.join(sweep, LEASES_DIR))
    for info in sorted((i for i in leases if i.type == pafs.FileType.File and lease_name(i.base_name)), key=lambda i: i.path):
        try:
            record = read_lease(root.read_text(info.path), time.time() - info.mtime.timestamp())
        except (OSError, UnicodeDecodeError, AttributeError):
            continue
        if record is not None:
            live.append({**record, "name": lease_name(info.base_name)})
    return live


def error_reason(error, width: int = 72) -> str:
    """A trial's recorded error as one short line: a traceback's last line (where the exception
    names what went wrong), else the first (`Type: message`), cut to `width` characters."""
    if not isinstance(error, str) or not error.strip():
        return ""
    lines = [part.strip() for part in error.strip().splitlines() if part.strip()]
    line = lines[-1] if "Traceback" in error else lines[0]  # a traceback ends with the exception; `Type: message` starts so
    return line if len(line) <= width else line[: width - 1] + "…"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(float("nan"), index=frame.index)


def sweep_status(root: StoreRoot | str, sweep: str | None = None) -> tuple[dict, pd.DataFrame]:
    """(summary, one row per trial) of one sweep of a store (or, given one argument, of the
    sweep directory it names)."""
    if sweep is None:  # sweep_status(STORE/<sweep>)
        text = os.fspath(root)
        root, sweep = _check_store(text.rstrip("/").rsplit("/", 1)[0] or "/"), text.rstrip("/").rsplit("/", 1)[-1]
    problems: list[str] = []
    card = None
    try:
        card = ExperimentCard.from_dict(read_card(root, sweep)) if root.is_file(root.join(sweep, CARD_FILE)) else None
    except StoreError as error:  # shown, and the sweep's trials still are
        problems.append(str(error))
    metric = (card or ExperimentCard()).metric
    spans = [spec_column(name) for name in SPANS]
    trials_dir, epochs_dir = root.join(sweep, TRIALS_DIR), root.join(sweep, EPOCHS_DIR)
    trials = read_parquet_dir(
        trials_dir,
        problems,
        root=root,
        columns=[TRIAL_ID, STATUS, "setting", spec_column("seed"), "error", "started_at", "ended_at", "wall_seconds", *spans],
    )
    epochs = read_parquet_dir(epochs_dir, problems, root=root, columns=[TRIAL_ID, EPOCH, BEST_EPOCH, metric, EPOCH_SECONDS])
    live = _live_leases(root, sweep)
    if len(trials) and TRIAL_ID not in trials:
        problems.append(f"{trials_dir}: files without a trial_id column, not shown")
        trials = trials.iloc[:0]
    if len(epochs) and not {TRIAL_ID, EPOCH} <= set(epochs.columns):
        problems.append(f"{epochs_dir}: files without trial_id and epoch columns, not counted")
    if len(epochs) and {TRIAL_ID, EPOCH} <= set(epochs.columns):
        groups = epochs.assign(_seconds=_column(epochs, EPOCH_SECONDS)).groupby(TRIAL_ID)
        done = groups[EPOCH].nunique()
        seconds = groups["_seconds"].mean()
        # the best so far is the epoch the trainer's selection holds, as the trial row will say
        selected = selected_epochs(epochs, [TRIAL_ID]).set_index(TRIAL_ID)
        best, best_epoch = _column(selected, metric), _column(selected, EPOCH)
    else:
        done = best = best_epoch = seconds = pd.Series(dtype=float)
    table = pd.DataFrame({"trial": trials[TRIAL_ID]} if len(trials) else {"trial": []})
    eta = pd.Series(dtype=float)
    if len(trials):
        total = sum(_column(trials, column).fillna(0).astype(int) for column in spans)
        ids = trials[TRIAL_ID]
        n_done = ids.map(done).fillna(0).astype(int)
        status = trials[STATUS].astype(str) if STATUS in trials else pd.Series("None", index=trials.index)
        running = status == RUNNING
        eta = (ids.map(seconds) * (total - n_done)).where(running & bool(live), float("nan")).reset_index(drop=True)
        table = pd.DataFrame(
            {
                "trial": ids,
                "setting": trials["setting"].fillna("") if "setting" in trials else "",
                "seed": _column(trials, spec_column("seed")).map(lambda seed: "" if pd.isna(seed) else int(seed)),
                "status": status.where(~running | bool(live), "interrupted?"),
                "epochs": n_done.astype(str) + "/" + total.astype(str),
                f"best {metric}": ids.map(best).astype(float),
                # 1-based, as the console counts epochs ("epoch 3/8"); the store's best_epoch is 0-based
                "at epoch": ids.map(best_epoch).map(lambda epoch: "" if pd.isna(epoch) else int(epoch) + 1),
                "ETA": eta.map(_duration).to_numpy(),
                "error": trials["error"].map(error_reason) if "error" in trials else "",
            }
        ).reset_index(drop=True)
        if not table["error"].astype(bool).any():
            table = table.drop(columns="error")  # no trial failed: no empty column
    planned = card.planned_trials if card else None
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    if planned and planned > len(table):
        counts["not started"] = planned - len(table)
    state = (
        RUNNING
        if live
        else (INTERRUPTED if counts.get("interrupted?") or counts.get(INTERRUPTED) or counts.get("not started") else "finished")
    )
    return {
        "sweep": sweep,
        "experiment": card.experiment if card else "",
        "preset": card.preset if card else "",
        "state": state,
        "counts": counts,
        "holders": live,
        "problems": problems,
        **_sweep_clock(trials, table, eta, counts.get("not started", 0), state),
    }, table


def _sweep_clock(trials: pd.DataFrame, table: pd.DataFrame, eta: pd.Series, not_started: int, state: str) -> dict:
    """The sweep's elapsed time (first trial start to now, or to the last end once finished) and,
    while running, its ETA: the running trials' longest ETA, plus the trials not started yet at
    the completed trials' mean wall time, as many at once as are running now."""
    if trials.empty or "started_at" not in trials:
        return {"elapsed": math.nan, "eta": math.nan}
    started = pd.to_datetime(trials["started_at"], errors="coerce", utc=True).min()
    ended = pd.to_datetime(trials.get("ended_at"), errors="coerce", utc=True).max() if "ended_at" in trials else pd.NaT
    until = pd.Timestamp.now(tz="UTC") if state == "running" or pd.isna(ended) else ended
    elapsed = (until - started).total_seconds() if pd.notna(started) else math.nan
    sweep_eta = math.nan
    if state == RUNNING:
        running = table["status"] == RUNNING
        walls = pd.to_numeric(trials.loc[trials[STATUS] == COMPLETED, "wall_seconds"], errors="coerce").dropna()
        own = eta[running.to_numpy()] if len(eta) else eta
        longest = float(own.max()) if own.notna().any() else 0.0
        queued = not_started * float(walls.mean()) / max(1, int(running.sum())) if not_started and len(walls) else 0.0
        sweep_eta = longest + queued if (len(own) or queued) else math.nan
    return {"elapsed": elapsed, "eta": sweep_eta}


def render_status(store: str | os.PathLike, sweep: str | None = None) -> str:
    """Every sweep and run group of the store; sweep: "all" (None: the same), "latest" (the
    newest), or a sweep id."""
    try:
        root = _check_store(store)
    except StoreError as error:
        if "does not exist" in str(error):
            raise StoreError(f"results store {store} does not exist") from None
        raise
    sweeps = sorted(
        (
            i.base_name
            for i in root.listdir(root.path)
            if i.type == pafs.FileType.Directory and visible(i.base_name) and root.is_dir(root.join(i.base_name, TRIALS_DIR))
        ),
        key=sweep_order,
    )
    if not sweeps:
        return f"{root}: no sweeps or runs yet"
    if sweep == "latest":
        sweeps = sweeps[-1:]
    elif sweep not in (None, "all"):
        if sweep not in sweeps:
            raise StoreError(f"no sweep {sweep!r} in {root}; it holds: {', '.join(sweeps)}")
        sweeps = [sweep]
    blocks = []
    for sweep in sweeps:
        summary, table = sweep_status(root, sweep)
        what = f"{summary['experiment']}, preset {summary['preset']}" if summary["experiment"] else "runs of dncml train"
        holders = "; ".join(f"pid {h.get('pid')} on {h.get('host')}" for h in summary["holders"])
        counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
        clock = "".join(
            f", {name} {_duration(summary[key])}" for name, key in (("elapsed", "elapsed"), ("ETA", "eta")) if math.isfinite(summary[key])
        )
        head = f"{summary['sweep']} ({what}): {summary['state']}{f' ({holders})' if holders else ''}: {counts}{clock}"
        body = table.to_string(index=False, float_format=lambda v: f"{v:.4f}") if len(table) else "  (no trial yet)"
        notes = [f"  skipped: {problem}" for problem in summary["problems"]]
        blocks.append(head + "\n" + "\n".join(["  " + line for line in body.splitlines()] + notes))
    return "\n\n".join(blocks)
