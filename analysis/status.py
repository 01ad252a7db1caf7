"""`dncml status STORE`: what a results store holds and what is running in it, from the store alone.

Per sweep (and `dncml train` run group): every trial's state, epochs done of its total, the best
value so far of the sweep's selection metric, and for the running ones an ETA from their epoch
times; trials a sweep has not started yet are counted from its card. A trial whose row says
`running` while no process holds the sweep's lease (`STORE/<sweep>/.leases/`) was cut off: it is
shown as `interrupted?`, and `--resume` continues it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time

import pandas as pd
import pyarrow.fs as pafs

from .store import CARD, StoreError, StoreRoot, _check_store, _read_card, _sweep_order, _visible, read_parquet_dir

STALE_LEASE = 60.0  # seconds without a heartbeat after which a lease no longer counts


def _live_leases(root: StoreRoot, sweep: str) -> list[dict]:
    live = []
    leases = root.listdir(root.join(sweep, ".leases"))
    for path in sorted(i.path for i in leases if i.type == pafs.FileType.File and i.base_name.endswith(".json")):
        try:
            info = root.info(path)
            record = json.loads(root.read_text(path))
            age = time.time() - info.mtime.timestamp()
        except (OSError, ValueError, AttributeError):
            continue
        if age > STALE_LEASE or not isinstance(record, dict):
            continue
        if record.get("host") == socket.gethostname():
            try:
                os.kill(int(record.get("pid", -1)), 0)
            except (ProcessLookupError, ValueError, TypeError):
                continue
            except PermissionError:
                pass
        live.append({**record, "name": path.rsplit("/", 1)[-1].removesuffix(".json")})
    return live


def _planned_trials(card: dict) -> int | None:
    grid = card.get("grid") or {}
    count = 1
    for values in grid.values():
        count *= len(values) if isinstance(values, list) else 1
    return count * int(card.get("num_samples") or 1) if card else None


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
    try:
        card = _read_card(root, sweep) if root.is_file(root.join(sweep, CARD)) else {}
    except StoreError as error:  # shown, and the sweep's trials still are
        card = {}
        problems.append(str(error))
    metric = str(card.get("metric") or "val_recall@1")
    mode = str(card.get("mode") or "max")
    spans = [f"spec_{name}" for name in ("warmup_epochs", "epochs", "finetune_epochs")]
    trials_dir, epochs_dir = root.join(sweep, "trials"), root.join(sweep, "epochs")
    trials = read_parquet_dir(
        trials_dir,
        problems,
        root=root,
        columns=["trial_id", "status", "setting", "spec_seed", "error", "started_at", "ended_at", "wall_seconds", *spans],
    )
    epochs = read_parquet_dir(epochs_dir, problems, root=root, columns=["trial_id", "epoch", metric, "epoch_seconds"])
    live = _live_leases(root, sweep)
    if len(trials) and "trial_id" not in trials:
        problems.append(f"{trials_dir}: files without a trial_id column, not shown")
        trials = trials.iloc[:0]
    if len(epochs) and not {"trial_id", "epoch"} <= set(epochs.columns):
        problems.append(f"{epochs_dir}: files without trial_id and epoch columns, not counted")
    if len(epochs) and {"trial_id", "epoch"} <= set(epochs.columns):
        groups = epochs.assign(_metric=_column(epochs, metric), _seconds=_column(epochs, "epoch_seconds")).groupby("trial_id")
        done = groups["epoch"].nunique()
        best = groups["_metric"].max() if mode == "max" else groups["_metric"].min()
        seconds = groups["_seconds"].mean()
    else:
        done = best = seconds = pd.Series(dtype=float)
    table = pd.DataFrame({"trial": trials["trial_id"]} if len(trials) else {"trial": []})
    if len(trials):
        total = sum(_column(trials, f"spec_{name}").fillna(0).astype(int) for name in ("warmup_epochs", "epochs", "finetune_epochs"))
        ids = trials["trial_id"]
        n_done = ids.map(done).fillna(0).astype(int)
        status = trials["status"].astype(str) if "status" in trials else pd.Series("None", index=trials.index)
        running = status == "running"
        eta = (ids.map(seconds) * (total - n_done)).where(running & bool(live), float("nan"))
        table = pd.DataFrame(
            {
                "trial": ids,
                "setting": trials["setting"].fillna("") if "setting" in trials else "",
                "seed": _column(trials, "spec_seed").map(lambda seed: "" if pd.isna(seed) else int(seed)),
                "status": status.where(~running | bool(live), "interrupted?"),
                "epochs": n_done.astype(str) + "/" + total.astype(str),
                f"best {metric}": ids.map(best).astype(float),
                "ETA": eta.map(_duration),
                "error": trials["error"].map(error_reason) if "error" in trials else "",
            }
        ).reset_index(drop=True)
        if not table["error"].astype(bool).any():
            table = table.drop(columns="error")  # no trial failed: no empty column
    planned = _planned_trials(card)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    if planned and planned > len(table):
        counts["not started"] = planned - len(table)
    state = (
        "running"
        if live
        else ("interrupted" if counts.get("interrupted?") or counts.get("interrupted") or counts.get("not started") else "finished")
    )
    return {
        "sweep": sweep,
        "experiment": card.get("experiment", ""),
        "preset": card.get("preset", ""),
        "state": state,
        "counts": counts,
        "holders": live,
        "problems": problems,
        **_sweep_clock(trials, table, counts.get("not started", 0), state),
    }, table


def _sweep_clock(trials: pd.DataFrame, table: pd.DataFrame, not_started: int, state: str) -> dict:
    """The sweep's elapsed time (first trial start to now, or to the last end once finished) and,
    while running, its ETA: the running trials' longest ETA, plus the trials not started yet at
    the completed trials' mean wall time, as many at once as are running now."""
    if trials.empty or "started_at" not in trials:
        return {"elapsed": math.nan, "eta": math.nan}
    started = pd.to_datetime(trials["started_at"], errors="coerce", utc=True).min()
    ended = pd.to_datetime(trials.get("ended_at"), errors="coerce", utc=True).max() if "ended_at" in trials else pd.NaT
    until = pd.Timestamp.now(tz="UTC") if state == "running" or pd.isna(ended) else ended
    elapsed = (until - started).total_seconds() if pd.notna(started) else math.nan
    eta = math.nan
    if state == "running":
        running = table[table["status"] == "running"]
        walls = pd.to_numeric(trials.loc[trials["status"] == "completed", "wall_seconds"], errors="coerce").dropna()
        own = [_seconds(text) for text in running["ETA"]] if len(running) else []
        longest = max([t for t in own if math.isfinite(t)], default=0.0)
        queued = not_started * float(walls.mean()) / max(1, len(running)) if not_started and len(walls) else 0.0
        eta = longest + queued if (own or queued) else math.nan
    return {"elapsed": elapsed, "eta": eta}


def _seconds(text: str) -> float:
    """`_duration`'s text back to seconds ("3m05s", "1h02m"; "" -> NaN)."""
    if not text:
        return math.nan
    if "h" in text:
        hours, minutes = text.rstrip("m").split("h")
        return int(hours) * 3600 + int(minutes) * 60
    minutes, seconds = text.rstrip("s").split("m")
    return int(minutes) * 60 + int(seconds)


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
            if i.type == pafs.FileType.Directory and _visible(i.base_name) and root.is_dir(root.join(i.base_name, "trials"))
        ),
        key=_sweep_order,
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
