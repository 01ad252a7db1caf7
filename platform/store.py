"""The results store: Parquet `trials` and `epochs` tables, one directory per sweep.

    STORE/<sweep>/trials/<trial_id>.parquet           one row per trial (rewritten as it ends)
    STORE/<sweep>/epochs/<trial_id>-e<epoch>.parquet  one row per (trial, epoch), while it runs
    STORE/<sweep>/epochs/<trial_id>-all.parquet       a trial's epochs in one file, once it ended

STORE is a local path or any URI `pyarrow.fs.FileSystem.from_uri` resolves (`s3://bucket/prefix`,
`gs://bucket/prefix`): every file of the store goes through the store's one `pyarrow.fs`
filesystem object, and Ray's own files (checkpoints, Tune's state) go to the same place
(`ray_storage`). Endpoint, region and credentials come from the standard AWS variables and files,
never from a spec, and are never written anywhere.

A file is published whole: locally it is written to a hidden temporary name, flushed and renamed
into place (pyarrow and pandas skip names starting with "." or "_"); on object storage it is one
PUT of the whole content (no rename there). A reader never sees half a file. A file's name is a
function of (trial, epoch): a trial resumed from a checkpoint replaces the rows of the epochs it
runs again instead of duplicating them. When a trial ends its epochs are compacted into one file
(`-all`); a per-epoch file written after that (a resumed trial) wins over the compacted row of
its epoch. Columns have fixed types per sweep (RunSpec fields by their declared types, metrics
float64), so `pandas.read_parquet(STORE/<sweep>/epochs)` reads every file of a sweep with one
schema.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import dncml.analysis.schema as schema
from dncml.analysis.rows import read_rows
from dncml.analysis.schema import (
    BOOKKEEPING,
    STATUSES,
    STUDY_FILE,
    TENSORBOARD_DIR,
    ExperimentCard,
    StoreError,
    best_column,
    final_column,
    selected_column,
    spec_column,
)
from dncml.trainers.files import publish_file
from dncml.trainers.spec import RunSpec, _field_type, valid_name

from . import ray_compat

# A sweep's driver merges ended trials into a segment once this many are ready, or an eighth of
# those merged before: up to 256 trials, one segment per 32; beyond, about 8.5 ln(N / 256) more
# (1,000 trials: 20 segments). A paper-size sweep of 40 trials is read as a handful of files.
SEGMENT_TRIALS = 32

# Per-epoch fields the trainer reports besides the evaluation metrics, and their types.
EPOCH_FIELDS: dict[str, pa.DataType] = {
    "epoch": pa.int64(),
    "total_epochs": pa.int64(),
    "phase": pa.string(),
    "active_learners": pa.int64(),
    "assignment_version": pa.int64(),
    "loss": pa.float64(),
    "steps": pa.int64(),
    "train_steps": pa.int64(),  # optimiser steps so far, this epoch's included
    "train_seconds": pa.float64(),
    "images_per_second": pa.float64(),
    "cpu_decoded_images": pa.int64(),  # data_path gpu: training images of the epoch PIL decoded
    "lr": pa.float64(),
    "eval_seconds": pa.float64(),
    "epoch_seconds": pa.float64(),
    schema.BEST_EPOCH: pa.int64(),
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
    "train_steps": pa.int64(),
    "train_seconds": pa.float64(),
    "cluster_seconds": pa.float64(),
    "eval_seconds": pa.float64(),
    "started_at": pa.string(),
    "ended_at": pa.string(),
    "host": pa.string(),
    "git_revision": pa.string(),
    "versions": pa.string(),
    "embedding_form": pa.string(),
    "recipe_settings": pa.string(),  # JSON: each recipe-governed choice as the run resolved it
}


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
    return schema.sweep_id(safe_name(name, "name"))


def _publish_file(table: pa.Table, path: Path) -> None:
    publish_file(path, lambda temporary: pq.write_table(table, temporary))


def write_text_atomic(path: Path, text: str) -> None:
    publish_file(path, lambda temporary: temporary.write_text(text))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]


def _unreachable(error: BaseException) -> str:
    """Why a store on object storage cannot be used, in one line: credentials refused, or not reached."""
    text = _first_line(error)
    if any(word in text for word in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden")):
        return (
            f"the credentials were refused ({text}); they come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or ~/.aws/credentials"
        )
    return f"cannot reach it ({text})"


def store_location(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) of a store named by a local path or by any URI that
    `pyarrow.fs.FileSystem.from_uri` resolves (s3://, gs://, file://, hdfs://)."""
    text = os.fspath(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise StoreError(
            f"results store {text}: {_first_line(error)} (a local path, or a URI pyarrow.fs knows: "
            "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, file:///PATH)"
        ) from None
    return filesystem, path.rstrip("/")


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


_writers: dict[str, Any] = {}


def tag_name(metric: str) -> str:
    """A metric's name where '@' is no allowed character (TensorBoard tags, MLflow keys):
    `val_recall@1` -> `val_recall_at_1`."""
    return metric.replace("@", "_at_")


def tensorboard_scalars(logdir: Path, metrics: dict[str, Any]) -> None:
    """Every numeric metric of an epoch as a TensorBoard scalar at step = epoch (`val_recall@1` as
    `val_recall_at_1`), in one event directory per trial (`tensorboard --logdir STORE`). A writer
    per directory and process."""
    from tensorboardX import SummaryWriter

    writer = _writers.get(str(logdir))
    if writer is None:
        writer = _writers[str(logdir)] = SummaryWriter(str(logdir))
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
        f"{schema.HPARAMS_PREFIX}{tag_name(k)}": float(v)
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
    return _rows_table([row], types)


def _cell(value: Any, kind: pa.DataType) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if value is not None and kind == pa.float64():
        value = float(value)
    elif value is not None and kind == pa.int64():
        value = int(value)
    elif value is not None and kind == pa.string() and not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return value


def _rows_table(rows: list[dict[str, Any]], types: dict[str, pa.DataType]) -> pa.Table:
    """Rows with every column of `types` (missing -> typed null); extra keys typed by value."""
    for row in rows:
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
    columns = {name: pa.array([_cell(row.get(name), kind) for row in rows], type=kind) for name, kind in types.items()}
    return pa.Table.from_pydict(columns, schema=pa.schema([pa.field(name, kind) for name, kind in types.items()]))


class ResultsStore:
    """A results store on one `pyarrow.fs` filesystem: a local path or a URI (`s3://bucket/prefix`).
    Every file of the store is read and written here; nothing else builds a path into it."""

    def __init__(self, root: str | os.PathLike):
        self.uri = os.fspath(root)
        self.fs, self.base = store_location(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        # as named (messages, hints): a local path as given, a URI as it is
        self.root = Path(self.uri if "://" not in self.uri else self.base) if self.local else self.uri

    @property
    def address(self) -> str:
        """What names this store in another process (an absolute path, or the URI): the store
        travels to Ray processes as this string, never with credentials."""
        return self.base if self.local else self.uri

    def __reduce__(self):
        return (ResultsStore, (self.address,))

    # ------------------------------------------------------------------ paths and raw files
    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def where(self, *parts: str) -> str:
        """A path of the store as a user names it (the URI's scheme kept)."""
        if self.local:
            return str(Path(self.root, *parts))
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{self.path(*parts)}"

    def check(self) -> None:
        """One clear line when the store cannot be reached (no endpoint, no bucket, credentials
        refused), before anything runs; nothing is written."""
        if self.local:
            if Path(self.base).exists() and not Path(self.base).is_dir():
                raise StoreError(f"results store {self.uri} is not a directory")
            job_dir = ray_compat.job_working_dir()
            if job_dir is not None and Path(self.base).resolve().is_relative_to(job_dir.resolve()):
                # Everything written there would go with Ray's copy of --working-dir when the job ends.
                raise StoreError(
                    f"results store {self.uri} is inside this Ray job's working directory, Ray's temporary copy of "
                    "--working-dir, which it deletes after the job: pass --storage an absolute path every node "
                    "sees (a shared filesystem) or a bucket (s3://BUCKET/PREFIX)"
                )
            return
        bucket = self.base.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
            if info.type == pafs.FileType.NotFound:
                raise StoreError(f"results store {self.uri}: bucket {bucket!r} does not exist (create it first)")
            self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True, recursive=False))
        except OSError as error:
            raise StoreError(f"results store {self.uri}: {_unreachable(error)}") from None

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def create_exclusive(self, path: str, text: str) -> bool:
        """Create `path` holding `text` unless it exists (True: this call created it). Of two
        processes on any nodes, exactly one wins: locally an O_EXCL create, on S3 a conditional
        PUT (If-None-Match), elsewhere refused like the lease."""
        if self.local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(handle, "w") as out:
                out.write(text)
            return True
        if self.fs.type_name != "s3":
            raise StoreError(
                f"results store {self.uri}: no exclusive create on a {self.fs.type_name} filesystem: use a local path or s3://"
            )
        from botocore.exceptions import ClientError

        bucket, key = path.split("/", 1)
        try:
            _s3_client(self, f"claim {key}").put_object(Bucket=bucket, Key=key, Body=text.encode(), IfNoneMatch="*")
        except ClientError as error:
            if BucketLease._code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def listdir(self, path: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))

    def files(self, path: str, suffix: str = ".parquet") -> list[str]:
        """The visible files of a directory ending in `suffix`, sorted."""
        return sorted(
            info.path
            for info in self.listdir(path)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix) and schema.visible(info.base_name)
        )

    def publish(self, path: str, data: bytes) -> None:
        """`data` at `path`, whole or not at all: locally a flushed temporary file renamed into
        place, on object storage one PUT of the whole content."""
        if self.local:
            publish_file(Path(path), lambda temporary: temporary.write_bytes(data))
            return
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def write_table(self, table: pa.Table, path: str) -> None:
        if self.local:
            _publish_file(table, Path(path))
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.publish(path, sink.getvalue().to_pybytes())

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=columns, filesystem=self.fs)

    def read_rows(
        self, directory: str, columns: list[str] | None = None, skipped: list[str] | None = None, row_filter=None
    ) -> pa.Table | None:
        """A sweep directory's rows (`trials/` or `epochs/`) as one table, one row per key
        (`rows.read_rows`: a trial's own file over a segment, per-epoch over compacted), sorted
        by it; only `columns` (and the keys) if given; None when there is no file. A file that
        cannot be read is left out with a warning naming it ("path: error" added to `skipped`):
        one bad file must not hide every other trial."""
        keys = schema.ROW_KEYS[directory.rstrip("/").rsplit("/", 1)[-1]]
        return read_rows(self.fs, self.files(directory), keys, columns, skipped, self._where, row_filter)

    def _where(self, path: str) -> str:
        return self.where(path[len(self.base) + 1 :]) if path.startswith(self.base + "/") else path

    # --------------------------------------------------------------------------- the layout
    def sweep_dir(self, sweep: str) -> str:
        return self.path(sweep)

    def ray_dir(self, sweep: str, run_id: str | None = None) -> str:
        """Ray's own files of a sweep (Tune's state under `tune/`, one Ray Train run per trial),
        absolute: Ray hands it to processes with other working directories."""
        return self.path(schema.RAY_DIR, sweep, *([run_id] if run_id else []))

    def run_path(self, sweep: str, run_id: str, *parts: str) -> str:
        """A file of one run beside Ray's own (its fatal error, its clustering actor's rounds)."""
        return self.path(schema.RAY_DIR, sweep, run_id, *parts)

    def ray_storage(self, sweep: str) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for Ray's RunConfig: the store's own place."""
        return self.ray_dir(sweep), (None if self.local else self.fs)

    def sweeps_of(self, prefix: str, with_ray_dir: str | None = None) -> list[str]:
        """The sweep ids starting with `prefix`, oldest first (ids end in their start time);
        with `with_ray_dir`, only those whose Ray directory holds that sub-directory."""
        found = [i.base_name for i in self.listdir(self.base) if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)]
        wanted = [
            s
            for s in found
            if with_ray_dir is None or self.fs.get_file_info(f"{self.ray_dir(s)}/{with_ray_dir}").type == pafs.FileType.Directory
        ]
        return sorted(wanted)

    def write_card(self, sweep: str, card: ExperimentCard | dict[str, Any]) -> None:
        """The experiment card (`experiment.json`): what analysis needs to read the sweep alone."""
        card = card if isinstance(card, ExperimentCard) else ExperimentCard.from_dict(card)
        self.publish(self.card_path(sweep), card.to_json().encode())

    def card_path(self, sweep: str) -> str:
        return self.path(sweep, schema.CARD_FILE)

    def read_card(self, sweep: str) -> ExperimentCard | None:
        """The sweep's card (None when it has none; StoreError when it is not a card)."""
        data = self.read_bytes(self.card_path(sweep))
        if data is None:
            return None
        try:
            text = data.decode()
        except UnicodeDecodeError as error:
            raise StoreError(f"{self.where(sweep, schema.CARD_FILE)}: cannot read the experiment card ({error})") from None
        return ExperimentCard.from_dict(schema.parse_card(text, self.where(sweep, schema.CARD_FILE)))

    def write_text(self, path: str, text: str) -> None:
        self.publish(path, text.encode())

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode()

    # --------------------------------------------------------------------------- the rows
    def trial_rows(self, sweep: str, columns: list[str] | None = None, skipped: list[str] | None = None) -> list[dict[str, Any]]:
        """Every trial row of a sweep (only `columns`, if given), as plain dicts, by trial id. A
        file that cannot be read is skipped and named (a warning, and `skipped`)."""
        table = self.read_rows(self.path(sweep, schema.TRIALS_DIR), columns, skipped)
        if table is None:
            return []
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        return table.to_pylist()

    def statuses(self, sweep: str) -> dict[str, str]:
        """Trial id -> recorded status, for every trial row of a sweep."""
        return {row["trial_id"]: row["status"] for row in self.trial_rows(sweep, ["trial_id", "status"])}

    def write_trial(self, sweep: str, row: dict[str, Any], metric_names: list[str]) -> None:
        types = dict(TRIAL_FIELDS)
        types.update({spec_column(f.name): _spec_type(f.name) for f in dataclasses.fields(RunSpec)})
        for column in (final_column, best_column):
            types.update({column(name): pa.float64() for name in metric_names})
        self.write_table(_row_table(row, types), self.path(sweep, schema.TRIALS_DIR, schema.trial_file(row["trial_id"])))

    @staticmethod
    def _epoch_types(metric_names: list[str]) -> dict[str, pa.DataType]:
        types = {"sweep": pa.string(), "trial_id": pa.string(), **EPOCH_FIELDS}
        types.update({name: pa.float64() for name in metric_names})
        # `test_eval: selected`: the last epoch carries the selected weights' test metrics; every
        # row has their columns, so that one schema reads the whole sweep
        types.update({selected_column(name): pa.float64() for name in metric_names if not name.startswith("val_")})
        return types

    def write_epoch(self, sweep: str, trial_id: str, metrics: dict[str, Any], metric_names: list[str]) -> None:
        row = {**metrics, "sweep": sweep, "trial_id": trial_id}
        name = schema.epoch_file(trial_id, metrics["epoch"])
        self.write_table(_row_table(row, self._epoch_types(metric_names)), self.path(sweep, schema.EPOCHS_DIR, name))
        self.tensorboard(sweep, trial_id, metrics)

    def record_missing_epochs(self, sweep: str, trial_id: str, history: list[dict[str, Any]], metric_names: list[str]) -> list[int]:
        """Write the epochs of a checkpoint's `history` that the store lacks (a crash between a
        checkpoint and its epoch row, e.g. a driver killed -9, would otherwise lose that epoch
        for good: the resumed run continues after the checkpoint); returns their numbers."""
        recorded = {row["epoch"] for row in self.epoch_rows(sweep, trial_id)}
        missing = [metrics for metrics in history if metrics["epoch"] not in recorded]
        for metrics in missing:
            self.write_epoch(sweep, trial_id, metrics, metric_names)
        return [int(metrics["epoch"]) for metrics in missing]

    def write_epochs(self, sweep: str, trial_id: str, rows: list[dict[str, Any]], metric_names: list[str]) -> None:
        """A whole finished trial's epoch rows at once, in the compacted form a trial ends in
        (`<trial>-all.parquet`; no TensorBoard events): what imports and benchmarks write."""
        rows = [{**metrics, "sweep": sweep, "trial_id": trial_id} for metrics in rows]
        self.write_table(
            _rows_table(rows, self._epoch_types(metric_names)), self.path(sweep, schema.EPOCHS_DIR, schema.compacted_file(trial_id))
        )

    def tensorboard(self, sweep: str, trial_id: str, metrics: dict[str, Any], write=None) -> None:
        """`write(logdir, metrics)` (default: the epoch's scalars, `tensorboard_scalars`) as
        TensorBoard events in STORE/<sweep>/tensorboard/<trial>/: written in place locally; on
        object storage, into a local directory whose event files are then published whole."""
        write = write or tensorboard_scalars
        if self.local:
            write(Path(self.path(sweep, TENSORBOARD_DIR, trial_id)), metrics)
            return
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        local = Path(tempfile.gettempdir(), f"dncml-tensorboard-{os.getuid()}", digest, sweep, trial_id)
        write(local, metrics)
        for events in local.iterdir():
            if events.is_file():
                self.publish(self.path(sweep, TENSORBOARD_DIR, trial_id, events.name), events.read_bytes())

    def _epoch_files(self, sweep: str, trial_id: str) -> tuple[str | None, list[str], list[str]]:
        """(the compacted file if any, the per-epoch files in epoch order, the segments) of one trial's
        epochs (a segment may hold them: the driver merges ended trials)."""
        compacted, per_epoch, segments = None, [], []
        for path in self.files(self.path(sweep, schema.EPOCHS_DIR)):
            name = path.rsplit("/", 1)[-1]
            if name == schema.compacted_file(trial_id):
                compacted = path
            elif schema.epoch_of(name, trial_id) is not None:
                per_epoch.append(path)
            elif schema.segment_trials(name) is not None:
                segments.append(path)
        return compacted, per_epoch, segments

    def _epoch_table(self, sweep: str, trial_id: str) -> tuple[pa.Table | None, str | None, list[str]]:
        compacted, per_epoch, segments = self._epoch_files(sweep, trial_id)
        files = segments + ([compacted] if compacted else []) + per_epoch
        only = pads.field(schema.TRIAL_ID) == trial_id if segments else None
        table = read_rows(self.fs, files, schema.ROW_KEYS[schema.EPOCHS_DIR], where=self._where, row_filter=only)
        return (table if table is not None and table.num_rows else None), compacted, per_epoch

    def epoch_rows(self, sweep: str, trial_id: str) -> list[dict[str, Any]]:
        """One trial's epoch rows, in epoch order, as plain dicts (missing values as None)."""
        table, _, _ = self._epoch_table(sweep, trial_id)
        return [] if table is None else table.to_pylist()

    def compact_epochs(self, sweep: str, trial_id: str) -> None:
        """A trial's epochs into one file (`<trial>-all.parquet`), then its per-epoch files removed:
        a sweep of N trials is N epoch files to read, not N x epochs. Safe at any point: until the
        per-epoch files are gone, readers prefer them and the rows are the same."""
        table, compacted, per_epoch = self._epoch_table(sweep, trial_id)
        if table is None or not per_epoch:
            return
        self.write_table(table, self.path(sweep, schema.EPOCHS_DIR, schema.compacted_file(trial_id)))
        for path in per_epoch:
            self.delete(path)

    def compact_sweep(self, sweep: str, final: bool = False) -> int:
        """Ended trials' rows and epochs merged into one segment file each (`~segment-*.parquet` in
        `trials/` and `epochs/`), their own files then removed: a sweep of N trials is read as
        about log N files, not 2 N. Called by the sweep's driver alone (it holds the sweep's
        lease) whenever a trial ends, and with `final` as the sweep ends. A trial is merged only
        once its end stands (`schema.ENDED`) and its epochs are compacted; each trial is merged
        once. Merges when at least `SEGMENT_TRIALS` trials are ready, or an eighth of those
        already merged (`final`: any), so segments grow with the sweep. Safe at any point: the
        segment is published before anything is removed, and readers keep one copy of a row.
        Returns the trials merged."""
        trials_dir, epochs_dir = self.path(sweep, schema.TRIALS_DIR), self.path(sweep, schema.EPOCHS_DIR)
        trial_files = self.files(trials_dir)
        own = [path for path in trial_files if schema.segment_trials(path.rsplit("/", 1)[-1]) is None]
        merged = sum(schema.segment_trials(path.rsplit("/", 1)[-1]) or 0 for path in trial_files)
        due = 1 if final else max(SEGMENT_TRIALS, merged // 8)
        if len(own) < due:
            return 0
        table = read_rows(self.fs, own, schema.ROW_KEYS[schema.TRIALS_DIR], [schema.STATUS], where=self._where)
        epoch_files = self.files(epochs_dir)
        running = {schema.epoch_file_trial(path.rsplit("/", 1)[-1]) for path in epoch_files} - {None}
        ready = sorted(
            row[schema.TRIAL_ID]
            for row in (table.to_pylist() if table is not None else [])
            if row[schema.STATUS] in schema.ENDED and row[schema.TRIAL_ID] not in running
        )
        if len(ready) < due:
            return 0
        present = set(epoch_files)
        epochs = {t: p for t in ready if (p := self.path(sweep, schema.EPOCHS_DIR, schema.compacted_file(t))) in present}
        rows = {t: self.path(sweep, schema.TRIALS_DIR, schema.trial_file(t)) for t in ready}
        removed = []
        for files, directory in ((epochs, schema.EPOCHS_DIR), (rows, schema.TRIALS_DIR)):  # epochs first: a row's epochs are never missing
            table = read_rows(self.fs, list(files.values()), schema.ROW_KEYS[directory], where=self._where) if files else None
            if table is None:
                continue
            self.write_table(table, self.path(sweep, directory, schema.segment_file(len(ready))))
            held = set(table[schema.TRIAL_ID].to_pylist())
            removed += [path for trial, path in files.items() if trial in held]  # an unreadable file stays where it is
        for path in removed:
            self.delete(path)
        return len(ready)

    def trial_row(self, sweep: str, trial_id: str) -> dict[str, Any] | None:
        """A trial's row as recorded (None if the store has none): its own file, else the segment
        that holds it."""
        path = self.path(sweep, schema.TRIALS_DIR, schema.trial_file(trial_id))
        if self.is_file(path):
            return self.read_table(path).to_pylist()[0]
        segments = [p for p in self.files(self.path(sweep, schema.TRIALS_DIR)) if schema.segment_trials(p.rsplit("/", 1)[-1]) is not None]
        only = pads.field(schema.TRIAL_ID) == trial_id
        table = read_rows(self.fs, segments, schema.ROW_KEYS[schema.TRIALS_DIR], where=self._where, row_filter=only)
        return table.to_pylist()[0] if table is not None and table.num_rows else None

    def latest_run(self, sweep: str, name: str) -> dict[str, Any] | None:
        """The newest trial row of the runs named `name` in a sweep (None if there is none)."""
        rows = [row for row in self.trial_rows(sweep) if row.get(spec_column("name")) == name]
        return max(rows, key=lambda row: (row.get("started_at") or "", row["trial_id"])) if rows else None

    def selected_checkpoint(self, sweep: str, trial_id: str) -> str:
        """The checkpoint Ray kept for a trial's validation-selected epoch (its `best_epoch`), as
        a path in the store's filesystem (`local_checkpoint` brings one from a bucket)."""
        row = self.trial_row(safe_name(sweep, "sweep"), safe_name(trial_id, "trial"))
        if row is None:
            raise StoreError(f"no trial {trial_id!r} in {self.where(sweep)}")
        epochs = {e["epoch"]: e for e in self.epoch_rows(sweep, trial_id)}
        chosen = epochs.get(row.get(schema.BEST_EPOCH), {})
        path = chosen.get("checkpoint")
        if not path or not self.is_file(path.rstrip("/") + "/state.pt"):
            raise StoreError(
                f"trial {trial_id}: no checkpoint of its selected epoch {row.get('best_epoch')} "
                f"(recorded: {path or 'none'}); runs record one when trained on Ray"
            )
        return path

    def own_sweep_dir(self, sweep: str) -> str:
        """The sweep's folder, refused (StoreError) when it is a symbolic link: every write would
        follow it somewhere else. Object stores have no links."""
        path = self.sweep_dir(sweep)
        if self.local and Path(path).is_symlink():
            raise StoreError(f"{self.where(sweep)} is a symbolic link: refused (a sweep's folder holds its own files only)")
        return path

    def local_checkpoint(self, path: str, into: str | os.PathLike) -> str:
        """A checkpoint directory of the store as a local directory: itself when the store is
        local, else a copy under `into`."""
        if self.local:
            return path
        target = Path(into) / path.rstrip("/").rsplit("/", 1)[-1]
        target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(target), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return str(target)

    def lease(self, sweep: str, name: str) -> Lease | BucketLease:
        """The lease that says a sweep (name `sweep`) or one run of it is being run."""
        self.own_sweep_dir(sweep)
        what = f"{sweep}/{name}"
        path = self.path(sweep, schema.LEASES_DIR, schema.lease_file(name))
        if self.local:
            return Lease(Path(path), what)
        if self.fs.type_name == "s3":
            return BucketLease(self, path, what)
        raise StoreError(
            f"results store {self.uri}: no atomic lease on a {self.fs.type_name} filesystem (a conditional create is needed "
            "so that two drivers cannot both run a sweep): use a local path or s3://"
        )

    def finished_trial(self, sweep: str, trial_id: str, total_epochs: int) -> list[dict[str, Any]] | None:
        """The epoch rows of a trial the store holds as `completed` with every one of its
        `total_epochs` epochs, else None. The store, not Tune's experiment state, says whether a
        trial is finished: Tune may record a trial's end after the store did (or never, when the
        driver dies in between)."""
        row = self.trial_row(sweep, trial_id)
        if row is None or row.get("status") != schema.COMPLETED:
            return None
        epochs = self.epoch_rows(sweep, trial_id)
        return epochs if [e["epoch"] for e in epochs] == list(range(total_epochs)) else None

    # --------------------------------------------------------------------- the Optuna study
    def study_url(self, sweep: str, given: str | None = None) -> str:
        """Where Optuna keeps a search's study: `given` (an RDB URL, `--optuna-storage`), else
        SQLite in the sweep's folder of a local store, else SQLite on this machine's disk (a
        database cannot live on object storage), copied into the store by `save_study`."""
        if given:
            return given
        return f"sqlite:///{self._study_file(sweep)}"

    def _study_file(self, sweep: str) -> Path:
        if self.local:
            return Path(self.path(sweep, STUDY_FILE))
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir(), f"dncml-studies-{os.getuid()}", digest, sweep, STUDY_FILE)

    def save_study(self, sweep: str, given: str | None = None) -> None:
        """A copy of the study's SQLite file in STORE/<sweep>/optuna.db (a consistent snapshot:
        SQLite's own backup), for `--resume` on another machine and for `dncml plot`. Nothing to
        do for a local store (the study is there) or an RDB URL of the user's."""
        if self.local or given:
            return
        import sqlite3

        source = self._study_file(sweep)
        if not source.is_file():
            return
        snapshot = source.with_name(f".{source.name}.{uuid.uuid4().hex}.copy")
        try:
            with sqlite3.connect(source) as src, sqlite3.connect(snapshot) as dst:
                src.backup(dst)
            self.publish(self.path(sweep, STUDY_FILE), snapshot.read_bytes())
        finally:
            snapshot.unlink(missing_ok=True)

    def restore_study(self, sweep: str, given: str | None = None) -> None:
        """`--resume` on a machine without the study: this machine's copy from the store."""
        if self.local or given:
            return
        target = self._study_file(sweep)
        data = self.read_bytes(self.path(sweep, STUDY_FILE))
        if data is not None and not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            publish_file(target, lambda temporary: temporary.write_bytes(data))

    def prepare_study(self, sweep: str, given: str | None = None) -> str:
        """The study's URL, its folder made."""
        if not given:
            self._study_file(sweep).parent.mkdir(parents=True, exist_ok=True)
        return self.study_url(sweep, given)


def spec_differences(row: dict[str, Any], spec: RunSpec) -> list[str]:
    """The RunSpec fields on which a stored trial row and `spec` disagree, as `field: stored -> given`."""
    differences = []
    for name, value in spec.to_dict().items():
        stored = row.get(spec_column(name))
        if (
            spec_column(name) in row
            and stored != value
            and not (isinstance(stored, float) and isinstance(value, float) and np.isclose(stored, value, rtol=1e-12, atol=0))
        ):
            differences.append(f"{name}: {stored!r} -> {value!r}")
    return differences


def _refusal(what: str, holder: dict) -> StoreError:
    return StoreError(
        f"{what} is still running (pid {holder.get('pid')} on {holder.get('host')}, "
        f"started {holder.get('started')}, heartbeat {holder['heartbeat_age']:.0f} s ago): "
        "stop it first, or wait for it to end"
    )


class Lease:
    """Who is running a sweep or a run right now: a small JSON file (host, pid, start) whose
    modification time a background thread refreshes. `--resume` refuses to take over while the
    holder is alive: on this host, its process exists and its heartbeat is fresh; on another
    host, its heartbeat is fresher than `STALE` seconds. A holder killed with -9 leaves a stale
    file, which the next run takes over. Taking it is atomic: the check and the write happen
    under an exclusive `flock` of a lock file beside it, so of two processes started together
    exactly one gets the lease."""

    HEARTBEAT, STALE = schema.LEASE_HEARTBEAT, schema.LEASE_STALE

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self._stop = None

    def holder(self) -> dict | None:
        """The live holder's record, or None when the lease is free (absent or stale)."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return None
        return schema.read_lease(text, age, self.STALE)

    def acquire(self) -> Lease:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            holder = self.holder()
            if holder is not None and not (holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()):
                raise _refusal(self.what, holder)
            record = schema.lease_record(_now())
            write_text_atomic(self.path, json.dumps(record))
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


def _s3_client(store: ResultsStore, what: str):
    """A boto3 S3 client for the store's endpoint (the standard AWS variables and files give the
    credentials): pyarrow.fs has no conditional PUT."""
    try:
        import boto3
    except ImportError:
        raise StoreError(
            f"{what}: an S3 bucket store needs conditional PUTs (the lease, resume claims), which take boto3 "
            "(pip install 'dncml[s3]'); refusing to run without a safe lease"
        ) from None
    import urllib.parse

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(store.uri).query))
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=query.get("region") or None)


class BucketLease:
    """The lease on an S3 bucket: an object created with a conditional PUT (`If-None-Match: *`),
    so that of two drivers exactly one creates it; a stale one (its holder's heartbeat older than
    `STALE`, or its process gone on this host) is taken over with `If-Match` on its ETag, so two
    takers cannot both win either. The heartbeat rewrites the object (`If-Match` on our own ETag)
    every `HEARTBEAT` seconds; its LastModified is the heartbeat. A server that ignores the
    conditions would let two drivers in: the first acquisition checks that it refuses a second
    create, and the sweep is refused with one line where it does not. pyarrow.fs has no
    conditional PUT, so this takes boto3 (the `s3` extra), with the same standard AWS variables."""

    HEARTBEAT, STALE = Lease.HEARTBEAT, Lease.STALE

    def __init__(self, store: ResultsStore, path: str, what: str):
        self.store, self.what = store, what
        self.bucket, self.key = path.split("/", 1)
        self._stop, self._etag, self._token = None, None, uuid.uuid4().hex

    def _client(self):
        return _s3_client(self.store, self.what)

    def _body(self) -> bytes:
        return json.dumps(schema.lease_record(self._started, token=self._token, beat=time.time())).encode()

    @staticmethod
    def _code(error) -> str:
        return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))

    def holder(self, client=None) -> dict | None:
        """The live holder's record (with `etag`), or None when the lease is free."""
        client = client or self._client()
        try:
            got = client.get_object(Bucket=self.bucket, Key=self.key)
            record = json.loads(got["Body"].read())
        except Exception as error:
            if self._code(error) in ("NoSuchKey", "404"):
                return None
            if isinstance(error, ValueError):
                record = {}
            else:
                raise
        age = time.time() - got["LastModified"].timestamp()
        record = {**record, "heartbeat_age": age, "etag": got["ETag"]} if isinstance(record, dict) else {"etag": got["ETag"]}
        if not schema.lease_is_live(record, age, self.STALE):
            return {**record, "stale": True}
        return record

    def acquire(self) -> BucketLease:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        self._started = _now()
        try:
            try:
                self._etag = client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")["ETag"]
            except ClientError as error:
                if self._code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
                holder = self.holder(client)
                if holder is not None and not holder.get("stale"):
                    raise _refusal(self.what, holder) from None
                try:  # take over the stale lease; of two takers, one gets the If-Match
                    kwargs = {"IfMatch": holder["etag"]} if holder else {"IfNoneMatch": "*"}
                    self._etag = client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **kwargs)["ETag"]
                except ClientError as again:
                    if self._code(again) in ("PreconditionFailed", "ConditionalRequestConflict"):
                        raise StoreError(f"{self.what}: another driver took the lease at the same moment; it runs, this does not") from None
                    raise
            self._check_conditions(client)
        except ClientError as error:
            raise StoreError(f"{self.what}: cannot take the lease in s3://{self.bucket}/{self.key} ({_first_line(error)})") from None
        except BotoCoreError as error:
            raise StoreError(f"{self.what}: cannot reach the bucket for the lease ({_first_line(error)})") from None
        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.HEARTBEAT):
                try:
                    self._etag = client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self._etag)["ETag"]
                except Exception:
                    return  # lost (taken over) or unreachable: the next beat cannot help

        threading.Thread(target=beat, name=f"lease {self.what}", daemon=True).start()
        return self

    def _check_conditions(self, client) -> None:
        """A second conditional create must fail now: else the server ignores If-None-Match."""
        from botocore.exceptions import ClientError

        try:
            client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")
        except ClientError as error:
            if self._code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return
            raise
        client.delete_object(Bucket=self.bucket, Key=self.key)
        raise StoreError(
            f"{self.what}: the S3 server at this endpoint ignores conditional writes (If-None-Match), so two drivers could "
            "both take the lease; refusing rather than guessing"
        )

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
        except Exception:
            pass  # taken over meanwhile, or unreachable: it goes stale

    def __enter__(self) -> BucketLease:
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
        from dncml.trainers.metric_keys import metric_names as expected_metrics

        store.own_sweep_dir(sweep)
        self.store, self.sweep, self.trial_id, self.spec = store, sweep, trial_id, spec
        self.experiment, self.setting = experiment, setting
        self.metric_names = metric_names or expected_metrics(spec)
        self.started = dt.datetime.now(dt.timezone.utc)
        previous = store.trial_row(sweep, trial_id) if start else None
        if previous and previous.get("started_at"):  # a resumed trial keeps the time it first started
            self.started = dt.datetime.fromisoformat(previous["started_at"])
        if previous:
            store.compact_epochs(sweep, trial_id)  # what it recorded so far, in one file
        self.history: list[dict] = []
        if start:
            self._write(schema.RUNNING)

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.store.write_epoch(self.sweep, self.trial_id, metrics, self.metric_names)

    def finish(self, status: str, error: str | None = None) -> str:
        """The final trial row, from the epoch rows in the store (whoever wrote them: this
        process, or a Ray Train controller)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        self.history = self.store.epoch_rows(self.sweep, self.trial_id)
        recorded = [h["epoch"] for h in self.history]
        if status == schema.COMPLETED and recorded != list(range(self.spec.total_epochs)):
            # `completed` means every epoch is in the store: anything else is a failure to say so.
            missing = sorted(set(range(self.spec.total_epochs)) - set(recorded))
            status, error = (
                schema.FAILED,
                (f"the run ended but the store holds epochs {recorded} of {self.spec.total_epochs} (missing {missing[:10]})"),
            )
        self._write(status, error)
        self.store.compact_epochs(self.sweep, self.trial_id)
        return status

    def fail(self, error: BaseException | str) -> str:
        """Record the trial as failed with the error's type and message (shortened)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return self.finish(schema.FAILED, error=text[:4000])

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
            "ended_at": None if status == schema.RUNNING else _now(),
            "wall_seconds": (dt.datetime.now(dt.timezone.utc) - self.started).total_seconds(),
            "host": socket.gethostname(),
            "git_revision": git_revision(),
            "versions": package_versions(),
            "embedding_form": self.spec.embedding_form,
            "recipe_settings": json.dumps(self.spec.recipe_settings(), sort_keys=True),  # what the null fields resolved to
        }
        row.update({spec_column(k): v for k, v in self.spec.to_dict().items()})
        if self.history:
            row["train_steps"] = sum(h.get("steps") or 0 for h in self.history)
            row["train_seconds"] = sum(h.get("train_seconds") or 0.0 for h in self.history)
            row["cluster_seconds"] = sum(h.get("cluster_seconds") or 0.0 for h in self.history)
            row["eval_seconds"] = sum(h.get("eval_seconds") or 0.0 for h in self.history)
            row[schema.BEST_EPOCH] = self.history[-1].get(schema.BEST_EPOCH)
            best = selected_epoch(self.history) or {}
            tested = selected_test_metrics(self.history)
            for name in self.metric_names:
                evaluated = [h for h in self.history if h.get(name) is not None]
                row[final_column(name)] = evaluated[-1][name] if evaluated else None
                row[best_column(name)] = tested.get(name) if name.startswith("test_") else best.get(name)
        self.store.write_trial(self.sweep, row, self.metric_names)
        if status != schema.RUNNING and self.history:
            hparams = {"setting": self.setting, "status": status, **self.spec.to_dict()}
            best = {k: v for k, v in row.items() if k.startswith(schema.BEST_PREFIX) and k != schema.BEST_EPOCH}
            self.store.tensorboard(self.sweep, self.trial_id, best, lambda logdir, metrics: tensorboard_hparams(logdir, hparams, metrics))


def selected_epoch(history: list[dict]) -> dict | None:
    """The report of the epoch model selection chose (the last report names it)."""
    chosen = history[-1].get(schema.BEST_EPOCH) if history else None
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
    prefix = schema.SELECTED_PREFIX
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
    _publish_file(pa.table(columns), out)
    return out
