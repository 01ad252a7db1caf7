"""The results store: Parquet `trials` and `epochs` tables, one directory per sweep.

    STORE/<sweep>/trials/<trial_id>.parquet           one row per trial (rewritten as it ends)
    STORE/<sweep>/epochs/<trial_id>-e<epoch>.parquet  one row per (trial, epoch)

Every file is written to a hidden temporary name and renamed into place, so a reader never sees
half a file (pyarrow and pandas skip names starting with "." or "_"). A file's name is a
function of (trial, epoch): a trial resumed from a checkpoint replaces the rows of the epochs it
runs again instead of duplicating them. Columns have fixed types per sweep (RunSpec fields by
their declared types, metrics float64), so `pandas.read_parquet(STORE/<sweep>/epochs)` reads
every file of a sweep with one schema.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import glob
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dncml.trainers.spec import RunSpec, _field_type, valid_name

# Per-epoch fields the trainer reports besides the evaluation metrics, and their types.
EPOCH_FIELDS: dict[str, pa.DataType] = {
    "epoch": pa.int64(),
    "total_epochs": pa.int64(),
    "phase": pa.string(),
    "active_learners": pa.int64(),
    "assignment_version": pa.int64(),
    "loss": pa.float64(),
    "steps": pa.int64(),
    "train_seconds": pa.float64(),
    "images_per_second": pa.float64(),
    "lr": pa.float64(),
    "eval_seconds": pa.float64(),
    "epoch_seconds": pa.float64(),
    "best_epoch": pa.int64(),
    "reclustered": pa.bool_(),
    "cluster_seconds": pa.float64(),
    "embed_seconds": pa.float64(),
    "kmeans_seconds": pa.float64(),
    "cluster_cost": pa.float64(),
    "cluster_changed": pa.float64(),
    "cluster_repaired": pa.int64(),
    "cluster_sizes": pa.string(),
    "cluster_classes": pa.string(),  # JSON: the number of classes in each cluster
    "class_purity": pa.float64(),  # share of a class's images in its largest cluster, mean over classes
    "group_purity": pa.float64(),  # share of a cluster's images from its most common dataset group
    "assignment_digest": pa.int64(),
    "backbone_rests": pa.bool_(),
    "full_embedding": pa.bool_(),
    # Written by the Ray Train callback from all workers' reports of the epoch:
    "workers": pa.int64(),
    "workers_agree": pa.bool_(),
    "node_ids": pa.string(),
    "session": pa.string(),
    "checkpoint": pa.string(),
}
TRIAL_FIELDS: dict[str, pa.DataType] = {
    "sweep": pa.string(),
    "trial_id": pa.string(),
    "experiment": pa.string(),
    "setting": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "epochs_done": pa.int64(),
    "best_epoch": pa.int64(),
    "wall_seconds": pa.float64(),
    "train_seconds": pa.float64(),
    "cluster_seconds": pa.float64(),
    "eval_seconds": pa.float64(),
    "started_at": pa.string(),
    "ended_at": pa.string(),
    "host": pa.string(),
    "git_revision": pa.string(),
    "versions": pa.string(),
    "embedding_form": pa.string(),
}
STATUSES = ("running", "completed", "failed", "pruned", "interrupted")


class StoreError(ValueError):
    """A results store that is missing, empty or not what was asked for."""


def _spec_type(name: str) -> pa.DataType:
    base, _ = _field_type(name)
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[base]


def safe_name(value: str, what: str) -> str:
    """A name that becomes a file or directory name in the store: letters, digits, '.', '_' and
    '-', not starting with '.' (no '/', no '..'), so it cannot leave its folder."""
    if not valid_name(value):
        raise StoreError(
            f"{what} {value!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting "
            "with '.' or '-', no '..'): it names files in the results store"
        )
    return value


def new_id(name: str) -> str:
    """`name-YYYYmmdd-HHMMSS-xxxxxx`: unique even for two runs of one spec started in the same second."""
    return f"{safe_name(name, 'name')}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def atomic_write(path: Path, write) -> None:
    """`write(temporary)` then rename over `path`: a reader sees the old file or the whole new one.
    The temporary name is unique (concurrent writers never share it), removed if writing fails,
    and flushed to disk before the rename, so a crash cannot leave a finished result half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _atomic_write(table: pa.Table, path: Path) -> None:
    atomic_write(path, lambda temporary: pq.write_table(table, temporary))


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in (
        "dncml",
        "torch",
        "torchvision",
        "ray",
        "faiss-gpu",
        "faiss-cpu",
        "pytorch-metric-learning",
        "optuna",
        "numpy",
        "pandas",
        "pyarrow",
        "scipy",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return json.dumps(found, sort_keys=True)


_writers: dict[Path, Any] = {}


def tag_name(metric: str) -> str:
    """A metric's name where '@' is no allowed character (TensorBoard tags, MLflow keys):
    `val_recall@1` -> `val_recall_at_1`."""
    return metric.replace("@", "_at_")


# Epoch fields that count or identify rather than measure: not drawn as TensorBoard scalars.
BOOKKEEPING = ("epoch", "total_epochs", "steps", "assignment_version", "assignment_digest", "best_epoch", "workers", "cluster_repaired")


def tensorboard_scalars(logdir: Path, metrics: dict[str, Any]) -> None:
    """Every numeric metric of an epoch as a TensorBoard scalar at step = epoch (`val_recall@1` as
    `val_recall_at_1`), in one event directory per trial (`tensorboard --logdir STORE`). A writer
    per directory and process."""
    from tensorboardX import SummaryWriter

    writer = _writers.get(logdir)
    if writer is None:
        writer = _writers[logdir] = SummaryWriter(str(logdir))
    for name, value in metrics.items():
        if name in BOOKKEEPING:
            continue
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
            writer.add_scalar(tag_name(name), float(value), int(metrics["epoch"]))
    writer.flush()


def tensorboard_hparams(logdir: Path, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A trial's setting and RunSpec in TensorBoard's HParams view, with its final metrics
    (`hparams/best_val_recall_at_1`, ...), in the trial's own event directory (a file of its own
    beside the scalars'), once the trial has ended."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summary

    values = {k: v if isinstance(v, (bool, str, int, float)) else str(v) for k, v in hparams.items()}
    finite = {
        f"hparams/{tag_name(k)}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)
    }
    experiment, start, end = hparams_summary(values, finite)
    # its own file: the scalars' writer may have opened one of the same second's name
    with SummaryWriter(str(logdir), filename_suffix=".hparams") as writer:
        for summary in (experiment, start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in finite.items():
            writer.add_scalar(tag, value, 0)


def _row_table(row: dict[str, Any], types: dict[str, pa.DataType]) -> pa.Table:
    """One row with every column of `types` (missing -> typed null); extra keys typed by value."""
    columns, fields = {}, []
    for name, value in row.items():
        if name not in types:
            types = {
                **types,
                name: pa.float64()
                if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
                else pa.bool_()
                if isinstance(value, bool)
                else pa.string(),
            }
    for name, kind in types.items():
        value = row.get(name)
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if value is not None and kind == pa.float64():
            value = float(value)
        elif value is not None and kind == pa.int64():
            value = int(value)
        elif value is not None and kind == pa.string() and not isinstance(value, str):
            value = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        columns[name] = pa.array([value], type=kind)
        fields.append(pa.field(name, kind))
    return pa.Table.from_pydict(columns, schema=pa.schema(fields))


class ResultsStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def sweep_dir(self, sweep: str) -> Path:
        return self.root / sweep

    def ray_dir(self, sweep: str, run_id: str | None = None) -> Path:
        """Ray's own files of a sweep (Tune's state under `tune/`, one Ray Train run per trial),
        absolute: Ray hands it to processes with other working directories."""
        base = self.root.resolve() / "_ray" / sweep
        return base / run_id if run_id else base

    def sweeps_of(self, prefix: str, with_ray_dir: str | None = None) -> list[str]:
        """The sweep ids starting with `prefix`, oldest first (ids end in their start time);
        with `with_ray_dir`, only those whose Ray directory holds that sub-directory."""
        found = [p.name for p in self.root.glob(glob.escape(prefix) + "*") if p.is_dir()]
        return sorted(s for s in found if with_ray_dir is None or (self.ray_dir(s) / with_ray_dir).is_dir())

    def write_card(self, sweep: str, card: dict[str, Any]) -> None:
        """The experiment card (`experiment.json`): what analysis needs to read the sweep alone."""
        write_text_atomic(self.sweep_dir(sweep) / "experiment.json", json.dumps(card, indent=2, default=str))

    def read_card(self, sweep: str) -> dict[str, Any] | None:
        path = self.sweep_dir(sweep) / "experiment.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def trial_rows(self, sweep: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Every trial row of a sweep (only `columns`, if given), as plain dicts."""
        directory = self.sweep_dir(sweep) / "trials"
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        return [pq.read_table(f, columns=columns).to_pylist()[0] for f in files]

    def statuses(self, sweep: str) -> dict[str, str]:
        """Trial id -> recorded status, for every trial row of a sweep."""
        return {row["trial_id"]: row["status"] for row in self.trial_rows(sweep, ["trial_id", "status"])}

    def write_trial(self, sweep: str, row: dict[str, Any], metric_names: list[str]) -> None:
        types = dict(TRIAL_FIELDS)
        types.update({f"spec_{f.name}": _spec_type(f.name) for f in dataclasses.fields(RunSpec)})
        for prefix in ("final_", "best_"):
            types.update({prefix + name: pa.float64() for name in metric_names})
        _atomic_write(_row_table(row, types), self.sweep_dir(sweep) / "trials" / f"{row['trial_id']}.parquet")

    def write_epoch(self, sweep: str, trial_id: str, metrics: dict[str, Any], metric_names: list[str]) -> None:
        types = {"sweep": pa.string(), "trial_id": pa.string(), **EPOCH_FIELDS}
        types.update({name: pa.float64() for name in metric_names})
        # `test_eval: selected`: the last epoch carries the selected weights' test metrics; every
        # row has their columns, so that one schema reads the whole sweep
        types.update({f"selected_{name}": pa.float64() for name in metric_names if not name.startswith("val_")})
        row = {**metrics, "sweep": sweep, "trial_id": trial_id}
        _atomic_write(_row_table(row, types), self.sweep_dir(sweep) / "epochs" / f"{trial_id}-e{int(metrics['epoch']):04d}.parquet")
        tensorboard_scalars(self.sweep_dir(sweep) / "tensorboard" / trial_id, metrics)

    def epoch_rows(self, sweep: str, trial_id: str) -> list[dict[str, Any]]:
        """One trial's epoch rows, in epoch order, as plain dicts (missing values as None)."""
        # Trial ids are user-chosen names: escape them, or `run[1]` would match nothing.
        files = sorted((self.sweep_dir(sweep) / "epochs").glob(f"{glob.escape(trial_id)}-e[0-9]*.parquet"))
        rows = [pq.read_table(f).to_pylist()[0] for f in files]
        return sorted(rows, key=lambda row: row["epoch"])

    def trial_row(self, sweep: str, trial_id: str) -> dict[str, Any] | None:
        """A trial's row as recorded (None if the store has none)."""
        path = self.sweep_dir(sweep) / "trials" / f"{trial_id}.parquet"
        return pq.read_table(path).to_pylist()[0] if path.is_file() else None

    def latest_run(self, sweep: str, name: str) -> dict[str, Any] | None:
        """The newest trial row of the runs named `name` in a sweep (None if there is none)."""
        rows = [row for row in self.trial_rows(sweep) if row.get("spec_name") == name]
        return max(rows, key=lambda row: (row.get("started_at") or "", row["trial_id"])) if rows else None

    def selected_checkpoint(self, sweep: str, trial_id: str) -> str:
        """The checkpoint Ray kept for a trial's validation-selected epoch (its `best_epoch`)."""
        row = self.trial_row(safe_name(sweep, "sweep"), safe_name(trial_id, "trial"))
        if row is None:
            raise StoreError(f"no trial {trial_id!r} in {self.sweep_dir(sweep)}")
        epochs = {e["epoch"]: e for e in self.epoch_rows(sweep, trial_id)}
        chosen = epochs.get(row.get("best_epoch"), {})
        path = chosen.get("checkpoint")
        if not path or not Path(path, "state.pt").is_file():
            raise StoreError(
                f"trial {trial_id}: no checkpoint of its selected epoch {row.get('best_epoch')} "
                f"(recorded: {path or 'none'}); runs record one when trained on Ray"
            )
        return path

    def lease(self, sweep: str, name: str) -> Lease:
        """The lease that says a sweep (name `sweep`) or one run of it is being run."""
        return Lease(self.sweep_dir(sweep) / ".leases" / f"{name}.json", f"{sweep}/{name}")

    def finished_trial(self, sweep: str, trial_id: str, total_epochs: int) -> list[dict[str, Any]] | None:
        """The epoch rows of a trial the store holds as `completed` with every one of its
        `total_epochs` epochs, else None. The store, not Tune's experiment state, says whether a
        trial is finished: Tune may record a trial's end after the store did (or never, when the
        driver dies in between)."""
        row = self.trial_row(sweep, trial_id)
        if row is None or row.get("status") != "completed":
            return None
        epochs = self.epoch_rows(sweep, trial_id)
        return epochs if [e["epoch"] for e in epochs] == list(range(total_epochs)) else None


def spec_differences(row: dict[str, Any], spec: RunSpec) -> list[str]:
    """The RunSpec fields on which a stored trial row and `spec` disagree, as `field: stored -> given`."""
    differences = []
    for name, value in spec.to_dict().items():
        stored = row.get(f"spec_{name}")
        if (
            f"spec_{name}" in row
            and stored != value
            and not (isinstance(stored, float) and isinstance(value, float) and np.isclose(stored, value, rtol=1e-12, atol=0))
        ):
            differences.append(f"{name}: {stored!r} -> {value!r}")
    return differences


class Lease:
    """Who is running a sweep or a run right now: a small JSON file (host, pid, start) whose
    modification time a background thread refreshes. `--resume` refuses to take over while the
    holder is alive: on this host, its process exists and its heartbeat is fresh; on another
    host, its heartbeat is fresher than `STALE` seconds. A holder killed with -9 leaves a stale
    file, which the next run takes over."""

    HEARTBEAT, STALE = 15.0, 60.0

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self._stop = None

    def holder(self) -> dict | None:
        """The live holder's record, or None when the lease is free (absent or stale)."""
        try:
            record = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return None
        if age > self.STALE:
            return None
        if record.get("host") == socket.gethostname():
            try:
                os.kill(int(record.get("pid", -1)), 0)
            except (ProcessLookupError, ValueError):
                return None
            except PermissionError:
                pass  # alive, another user's
        return {**record, "heartbeat_age": age}

    def acquire(self) -> Lease:
        holder = self.holder()
        if holder is not None and not (holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()):
            raise StoreError(
                f"{self.what} is still running (pid {holder.get('pid')} on {holder.get('host')}, "
                f"started {holder.get('started')}, heartbeat {holder['heartbeat_age']:.0f} s ago): "
                "stop it first, or wait for it to end"
            )
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        write_text_atomic(self.path, json.dumps(record))
        import threading

        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.HEARTBEAT):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        threading.Thread(target=beat, name=f"lease {self.what}", daemon=True).start()
        return self

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self.path.unlink(missing_ok=True)
            self._stop = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class TrialRecorder:
    """Writes one trial's rows as it runs: a 'running' trial row at the start, an epoch row per
    report, the final trial row (status, error, final and best metrics, timings) at the end."""

    def __init__(
        self,
        store: ResultsStore,
        sweep: str,
        trial_id: str,
        spec: RunSpec,
        experiment: str = "",
        setting: str = "",
        metric_names: list[str] | None = None,
        start: bool = True,
    ):
        from dncml.trainers.data.loading import metric_names as expected_metrics

        self.store, self.sweep, self.trial_id, self.spec = store, sweep, trial_id, spec
        self.experiment, self.setting = experiment, setting
        self.metric_names = metric_names or expected_metrics(spec)
        self.started = dt.datetime.now(dt.timezone.utc)
        previous = store.trial_row(sweep, trial_id) if start else None
        if previous and previous.get("started_at"):  # a resumed trial keeps the time it first started
            self.started = dt.datetime.fromisoformat(previous["started_at"])
        self.history: list[dict] = []
        if start:
            self._write("running")

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.store.write_epoch(self.sweep, self.trial_id, metrics, self.metric_names)

    def finish(self, status: str, error: str | None = None) -> str:
        """The final trial row, from the epoch rows in the store (whoever wrote them: this
        process, or a Ray Train controller)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        self.history = self.store.epoch_rows(self.sweep, self.trial_id)
        recorded = [h["epoch"] for h in self.history]
        if status == "completed" and recorded != list(range(self.spec.total_epochs)):
            # `completed` means every epoch is in the store: anything else is a failure to say so.
            missing = sorted(set(range(self.spec.total_epochs)) - set(recorded))
            status, error = (
                "failed",
                (f"the run ended but the store holds epochs {recorded} of {self.spec.total_epochs} (missing {missing[:10]})"),
            )
        self._write(status, error)
        return status

    def fail(self, error: BaseException | str) -> str:
        """Record the trial as failed with the error's type and message (shortened)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return self.finish("failed", error=text[:4000])

    def _write(self, status: str, error: str | None = None) -> None:
        row: dict[str, Any] = {
            "sweep": self.sweep,
            "trial_id": self.trial_id,
            "experiment": self.experiment,
            "setting": self.setting,
            "status": status,
            "error": error,
            "epochs_done": len(self.history),
            "started_at": self.started.isoformat(timespec="seconds"),
            "ended_at": None if status == "running" else _now(),
            "wall_seconds": (dt.datetime.now(dt.timezone.utc) - self.started).total_seconds(),
            "host": socket.gethostname(),
            "git_revision": git_revision(),
            "versions": package_versions(),
            "embedding_form": self.spec.embedding_form,
        }
        row.update({f"spec_{k}": v for k, v in self.spec.to_dict().items()})
        if self.history:
            row["train_seconds"] = sum(h.get("train_seconds") or 0.0 for h in self.history)
            row["cluster_seconds"] = sum(h.get("cluster_seconds") or 0.0 for h in self.history)
            row["eval_seconds"] = sum(h.get("eval_seconds") or 0.0 for h in self.history)
            row["best_epoch"] = self.history[-1].get("best_epoch")
            best = selected_epoch(self.history) or {}
            tested = selected_test_metrics(self.history)
            for name in self.metric_names:
                evaluated = [h for h in self.history if h.get(name) is not None]
                row["final_" + name] = evaluated[-1][name] if evaluated else None
                row["best_" + name] = tested.get(name) if name.startswith("test_") else best.get(name)
        self.store.write_trial(self.sweep, row, self.metric_names)
        if status != "running" and self.history:
            hparams = {"setting": self.setting, "status": status, **self.spec.to_dict()}
            best = {k: v for k, v in row.items() if k.startswith("best_") and k != "best_epoch"}
            tensorboard_hparams(self.store.sweep_dir(self.sweep) / "tensorboard" / self.trial_id, hparams, best)


def selected_epoch(history: list[dict]) -> dict | None:
    """The report of the epoch model selection chose (the last report names it)."""
    chosen = history[-1].get("best_epoch") if history else None
    return next((report for report in history if report["epoch"] == chosen), None)


def selected_test_metrics(history: list[dict]) -> dict:
    """The test metrics of the weights model selection chose: that epoch's own `test_*`
    (`test_eval: every_eval`, or a selection at the last epoch), else the `selected_test_*`
    that `test_eval: selected` reports on the last epoch, after testing those weights once.
    Empty while no test has run (a run pruned or stopped before its end)."""
    best = selected_epoch(history) or {}
    tested = {name: value for name, value in best.items() if name.startswith("test_") and value is not None}
    if tested or not history:
        return tested
    prefix = "selected_"
    return {name[len(prefix) :]: value for name, value in history[-1].items() if name.startswith(prefix + "test_") and value is not None}


def write_embeddings(out: str | os.PathLike, split, vectors: np.ndarray) -> Path:
    """A split's embeddings with their labels (and group labels, file paths) as Parquet."""
    out = Path(out)
    columns = {
        "index": pa.array(np.arange(len(vectors), dtype=np.int64)),
        "label": pa.array(split.labels),
        "group": pa.array(split.groups),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1]),
    }
    if split.paths is not None:
        columns["path"] = pa.array(split.paths)
    _atomic_write(pa.table(columns), out)
    return out
