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
from pathlib import Path

import pandas as pd

from .store import StoreError, _read_card, _sweep_order, _visible, read_parquet_dir

STALE_LEASE = 60.0  # seconds without a heartbeat after which a lease no longer counts


def _live_leases(sweep_dir: Path) -> list[dict]:
    live = []
    for path in sorted((sweep_dir / ".leases").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if age > STALE_LEASE:
            continue
        if record.get("host") == socket.gethostname():
            try:
                os.kill(int(record.get("pid", -1)), 0)
            except (ProcessLookupError, ValueError):
                continue
            except PermissionError:
                pass
        live.append({**record, "name": path.stem})
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


def sweep_status(sweep_dir: Path) -> tuple[dict, pd.DataFrame]:
    """(summary, one row per trial) of one sweep directory."""
    card = _read_card(sweep_dir) if (sweep_dir / "experiment.json").is_file() else {}
    metric = str(card.get("metric") or "val_recall@1")
    mode = str(card.get("mode") or "max")
    trials, epochs = read_parquet_dir(sweep_dir / "trials"), read_parquet_dir(sweep_dir / "epochs")
    live = _live_leases(sweep_dir)
    rows = []
    for _, trial in trials.iterrows():
        own = epochs[epochs["trial_id"] == trial["trial_id"]] if len(epochs) else pd.DataFrame()
        total = (
            int(trial.get("spec_warmup_epochs", 0) or 0)
            + int(trial.get("spec_epochs", 0) or 0)
            + int(trial.get("spec_finetune_epochs", 0) or 0)
        )
        done = int(own["epoch"].nunique()) if len(own) else 0
        values = pd.to_numeric(own.get(metric, pd.Series(dtype=float)), errors="coerce").dropna()
        best = (values.max() if mode == "max" else values.min()) if len(values) else math.nan
        status = str(trial.get("status"))
        eta = math.nan
        if status == "running":
            if not live:
                status = "interrupted?"
            elif len(own) and "epoch_seconds" in own:
                eta = float(pd.to_numeric(own["epoch_seconds"], errors="coerce").mean()) * (total - done)
        seed = trial.get("spec_seed")
        rows.append(
            {
                "trial": trial["trial_id"],
                "setting": trial.get("setting") or "",
                "seed": "" if seed is None or pd.isna(seed) else int(seed),
                "status": status,
                "epochs": f"{done}/{total}",
                f"best {metric}": best,
                "ETA": _duration(eta),
                "error": error_reason(trial.get("error")),
            }
        )
    table = pd.DataFrame(rows)
    if len(table) and not table["error"].astype(bool).any():
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
        "sweep": sweep_dir.name,
        "experiment": card.get("experiment", ""),
        "preset": card.get("preset", ""),
        "state": state,
        "counts": counts,
        "holders": live,
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


def render_status(store: str | Path, sweep: str | None = None) -> str:
    """Every sweep and run group of the store; sweep: "all" (None: the same), "latest" (the
    newest), or a sweep id."""
    root = Path(store)
    if not root.is_dir():
        raise StoreError(f"results store {root} does not exist")
    sweeps = sorted(
        (p for p in root.iterdir() if p.is_dir() and _visible(p) and (p / "trials").is_dir()), key=lambda p: _sweep_order(p.name)
    )
    if not sweeps:
        return f"{root}: no sweeps or runs yet"
    if sweep == "latest":
        sweeps = sweeps[-1:]
    elif sweep not in (None, "all"):
        if sweep not in {p.name for p in sweeps}:
            raise StoreError(f"no sweep {sweep!r} in {root}; it holds: {', '.join(p.name for p in sweeps)}")
        sweeps = [root / sweep]
    blocks = []
    for sweep_dir in sweeps:
        summary, table = sweep_status(sweep_dir)
        what = f"{summary['experiment']}, preset {summary['preset']}" if summary["experiment"] else "runs of dncml train"
        holders = "; ".join(f"pid {h.get('pid')} on {h.get('host')}" for h in summary["holders"])
        counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
        clock = "".join(
            f", {name} {_duration(summary[key])}" for name, key in (("elapsed", "elapsed"), ("ETA", "eta")) if math.isfinite(summary[key])
        )
        head = f"{summary['sweep']} ({what}): {summary['state']}{f' ({holders})' if holders else ''}: {counts}{clock}"
        body = table.to_string(index=False, float_format=lambda v: f"{v:.4f}") if len(table) else "  (no trial yet)"
        blocks.append(head + "\n" + "\n".join("  " + line for line in body.splitlines()))
    return "\n\n".join(blocks)
