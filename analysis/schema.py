"""The results store's format, declared once: the writer (`dncml.platform.store`) and every reader
(`dncml.analysis`) import it, so a file name, a status or a column prefix has one spelling.

    STORE/<sweep>/experiment.json                     the experiment card (`ExperimentCard`)
    STORE/<sweep>/trials/<trial_id>.parquet           one row per trial (rewritten as it ends)
    STORE/<sweep>/epochs/<trial_id>-e<epoch>.parquet  one row per (trial, epoch), while it runs
    STORE/<sweep>/epochs/<trial_id>-all.parquet       a trial's epochs in one file, once it ended
    STORE/<sweep>/{trials,epochs}/~segment-*.parquet  many ended trials' rows in one file (the sweep's driver merges them)
    STORE/<sweep>/optuna.db                           a search's Optuna study (study name = sweep id)
    STORE/<sweep>/tensorboard/<trial_id>/events.*     TensorBoard events
    STORE/<sweep>/.leases/<name>.json                 who runs the sweep (or one run of it) now
    STORE/_ray/...                                    Ray's own files (never read by analysis)

A row may briefly exist in two files (a compaction cut short leaves both copies): readers keep,
per key (`ROW_KEYS`), the copy in the file of the highest `file_rank`, the newest kind of write.

Standard library only: the trainers' side (torch), Ray and pandas stay out, so importing the
format costs nothing on either side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
import uuid
from typing import Any


class StoreError(ValueError):
    """A results store that is missing, empty, unreadable or not what was asked for (one readable
    line). The one error of the store, raised by its writer and its readers alike."""


# ----------------------------------------------------------------------------- the layout
CARD_FILE = "experiment.json"
STUDY_FILE = "optuna.db"
TENSORBOARD_DIR = "tensorboard"
TRIALS_DIR = "trials"
EPOCHS_DIR = "epochs"
LEASES_DIR = ".leases"
RAY_DIR = "_ray"
PARQUET = ".parquet"
COMPACTED = "-all.parquet"  # epochs/<trial_id>-all.parquet: a trial's epochs, once it ended
# trials/ and epochs/~segment-<trials>-<random>.parquet: ended trials' rows merged into one file.
# '~' is no character of a trial id (`safe_name`), so no trial's own file is ever taken for one.
SEGMENT_PREFIX = "~segment-"
_SEGMENT_FILE = re.compile(r"^~segment-(\d+)-[0-9a-f]+\.parquet$")
LEASE_SUFFIX = ".json"
_EPOCH_FILE = re.compile(r"-e(\d{4,})\.parquet$")


def trial_file(trial_id: str) -> str:
    return f"{trial_id}{PARQUET}"


def epoch_file(trial_id: str, epoch: int) -> str:
    return f"{trial_id}-e{int(epoch):04d}{PARQUET}"


def compacted_file(trial_id: str) -> str:
    return trial_id + COMPACTED


def segment_file(trials: int) -> str:
    """A new segment's name: how many trials it holds (the writer's merge rule reads it from a
    listing alone) and a random part (two segments never share a name)."""
    return f"{SEGMENT_PREFIX}{int(trials):06d}-{uuid.uuid4().hex[:12]}{PARQUET}"


def segment_trials(file_name: str) -> int | None:
    """The trials a segment file holds (`~segment-000032-....parquet` -> 32), None for any other file."""
    match = _SEGMENT_FILE.match(file_name)
    return int(match.group(1)) if match else None


def epoch_file_trial(file_name: str) -> str | None:
    """The trial a per-epoch file belongs to (`t-1-e0003.parquet` -> `t-1`), None for any other file."""
    match = _EPOCH_FILE.search(file_name)
    return file_name[: match.start()] if match and not file_name.startswith(SEGMENT_PREFIX) else None


def file_rank(file_name: str) -> int:
    """Which copy of a row wins when two files hold it: a trial's own or per-epoch file (written
    last) 2, a trial's compacted epochs 1, a segment 0."""
    if file_name.startswith(SEGMENT_PREFIX):
        return 0
    return 1 if file_name.endswith(COMPACTED) else 2


def epoch_of(file_name: str, trial_id: str) -> int | None:
    """The epoch a per-epoch file of `trial_id` holds (`<trial_id>-e0003.parquet` -> 3), else None."""
    match = _EPOCH_FILE.search(file_name)
    return int(match.group(1)) if match and epoch_file_trial(file_name) == trial_id else None


def lease_file(name: str) -> str:
    return f"{name}{LEASE_SUFFIX}"


def lease_name(file_name: str) -> str | None:
    """The run a lease file names (`sweep.json` -> `sweep`), None for any other file."""
    return file_name.removesuffix(LEASE_SUFFIX) if file_name.endswith(LEASE_SUFFIX) else None


def visible(file_name: str) -> bool:
    """Whether a file is published: temporaries start with '.' (pyarrow and pandas skip those and '_')."""
    return not file_name.startswith((".", "_"))


# ----------------------------------------------------------------------------- sweep ids
STAMP_FORMAT = "%Y%m%d-%H%M%S"
_SWEEP_ID = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}-\d{6})(?:-(?P<suffix>[0-9a-f]{6}))?$")


def sweep_id(name: str, when: float | None = None, suffix: str | None = None) -> str:
    """`name-YYYYmmdd-HHMMSS-xxxxxx`: unique even for two runs of one spec started in the same
    second (the caller checks that `name` is a safe file name)."""
    stamp = time.strftime(STAMP_FORMAT, time.localtime(when))
    return f"{name}-{stamp}-{suffix or uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(frozen=True)
class SweepId:
    name: str
    stamp: str  # YYYYmmdd-HHMMSS
    suffix: str  # "" for ids written before the random suffix


def parse_sweep_id(sweep: str) -> SweepId | None:
    """`name-YYYYmmdd-HHMMSS[-xxxxxx]` in its parts; None for a folder not named so (`train`)."""
    match = _SWEEP_ID.match(sweep)
    return SweepId(match["name"], match["stamp"], match["suffix"] or "") if match else None


def sweep_order(sweep: str) -> tuple[str, str]:
    """Sort key: oldest sweep first (by its time stamp; ids without one first, by name)."""
    parsed = parse_sweep_id(sweep)
    return (parsed.stamp if parsed else "", sweep)


# ----------------------------------------------------------------------------- trial statuses
RUNNING, COMPLETED, FAILED, PRUNED, INTERRUPTED = "running", "completed", "failed", "pruned", "interrupted"
STATUSES = (RUNNING, COMPLETED, FAILED, PRUNED, INTERRUPTED)
# Trials without a final row yet: still running, or stopped before their end (the platform marks
# those it will not resume `interrupted`). Shown on request, at their best epoch so far.
PARTIAL = (RUNNING, INTERRUPTED)
# Trials whose end stands (a resumed sweep runs none of them again): their rows may be merged into segments.
ENDED = (COMPLETED, FAILED, PRUNED)

# ----------------------------------------------------------------------------- columns
SPEC_PREFIX = "spec_"  # trials: every RunSpec field, `spec_<field>`
BEST_PREFIX = "best_"  # trials: a metric at the selected epoch (`best_epoch`); its test metrics as tested
FINAL_PREFIX = "final_"  # trials: a metric at its last evaluation
SELECTED_PREFIX = "selected_"  # epochs (last one): the selected weights' test metrics (`test_eval: selected`)
HPARAMS_PREFIX = "hparams/"  # TensorBoard's HParams view

SWEEP, TRIAL_ID, EPOCH, STATUS, ERROR, SETTING = "sweep", "trial_id", "epoch", "status", "error", "setting"
BEST_EPOCH = "best_epoch"  # every epoch row: the epoch the trainer's model selection holds so far (-1: none yet)
CHECKPOINT = "checkpoint"
STARTED_AT, ENDED_AT, WALL_SECONDS, EPOCH_SECONDS = "started_at", "ended_at", "wall_seconds", "epoch_seconds"
SPANS = ("warmup_epochs", "epochs", "finetune_epochs")  # the RunSpec fields whose sum is a trial's epochs
# Epoch fields that count or identify rather than measure (not drawn as TensorBoard scalars).
BOOKKEEPING = ("epoch", "total_epochs", "steps", "assignment_version", "assignment_digest", BEST_EPOCH, "workers", "cluster_repaired")


# The key of a row in each directory: one trial row per trial, one epoch row per (trial, epoch).
ROW_KEYS = {TRIALS_DIR: (TRIAL_ID,), EPOCHS_DIR: (TRIAL_ID, EPOCH)}


def spec_column(field: str) -> str:
    return SPEC_PREFIX + field


def best_column(metric: str) -> str:
    return BEST_PREFIX + metric


def final_column(metric: str) -> str:
    return FINAL_PREFIX + metric


def selected_column(metric: str) -> str:
    return SELECTED_PREFIX + metric


def spec_field(column: str) -> str | None:
    """`spec_seed` -> `seed`; None for a column that is no RunSpec field."""
    return column[len(SPEC_PREFIX) :] if column.startswith(SPEC_PREFIX) else None


# ----------------------------------------------------------------------------- the card
DEFAULT_METRIC, DEFAULT_MODE = "val_recall@1", "max"


@dataclasses.dataclass
class ExperimentCard:
    """`experiment.json`: what analysis needs to read a sweep from the store alone. Fields a
    card written by an older version lacks take these defaults; keys this version does not know
    are kept in `extra` (and written back)."""

    experiment: str = ""
    preset: str = ""
    sweep: str = ""
    description: str = ""
    rows: list[str] = dataclasses.field(default_factory=list)
    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE
    grid: dict[str, Any] = dataclasses.field(default_factory=dict)
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_samples: int = 1
    table: dict[str, Any] = dataclasses.field(default_factory=dict)
    plot: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe: str = "paper"
    base_run: dict[str, Any] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] | None = None  # None: a card from before aliases were stored
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    # What `--resume` compares: a sweep continues only the experiment it started.
    RESUME_KEYS = ("base_run", "grid", "search", "num_samples", "metric", "mode")

    @classmethod
    def from_dict(cls, card: dict[str, Any]) -> ExperimentCard:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        rows = card.get("rows") or []
        return cls(
            experiment=str(card.get("experiment") or ""),
            preset=str(card.get("preset") or ""),
            sweep=str(card.get("sweep") or ""),
            description=str(card.get("description") or ""),
            rows=[rows] if isinstance(rows, str) else list(rows),
            metric=str(card.get("metric") or DEFAULT_METRIC),
            mode=str(card.get("mode") or DEFAULT_MODE),
            grid=dict(card.get("grid") or {}),
            search=dict(card.get("search") or {}),
            num_samples=int(card.get("num_samples") or 1),
            table=dict(card.get("table") or {}),
            plot=dict(card.get("plot") or {}),
            recipe=str(card.get("recipe") or "paper"),
            base_run=dict(card.get("base_run") or {}),
            aliases=dict(card["aliases"]) if card.get("aliases") else None,
            extra={k: v for k, v in card.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @property
    def planned_trials(self) -> int:
        """Trials the sweep plans: the grid's points times its samples."""
        count = 1
        for values in self.grid.values():
            count *= len(values) if isinstance(values, list) else 1
        return count * self.num_samples


def parse_card(text: str, where: str) -> dict[str, Any]:
    """A card file's JSON object, as written (StoreError naming `where` when it is none)."""
    try:
        card = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{where}: cannot read the experiment card ({error})") from None
    if not isinstance(card, dict):
        raise StoreError(f"{where}: the experiment card is not a JSON object")
    return card


# ----------------------------------------------------------------------------- leases
LEASE_HEARTBEAT = 15.0  # seconds between a holder's heartbeats (the lease file's modification time)
LEASE_STALE = 60.0  # seconds without a heartbeat after which a lease no longer counts


def lease_record(started: str, **more: Any) -> dict[str, Any]:
    """What a lease file holds: this process (host, pid) and when it started."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started, **more}


def holder_alive(record: dict) -> bool:
    """Whether a lease record's process lives (on this host; another host's always counts)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def lease_is_live(record: Any, age: float, stale: float = LEASE_STALE) -> bool:
    """The staleness rule: a lease counts while its heartbeat is younger than `stale` seconds and
    its holder's process lives (checked on this host only)."""
    return isinstance(record, dict) and age <= stale and holder_alive(record)


def read_lease(text: str | bytes, age: float, stale: float = LEASE_STALE) -> dict | None:
    """A lease file's record with its `heartbeat_age`, or None when the lease does not count
    (unreadable, stale, or its process gone)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return {**record, "heartbeat_age": age} if lease_is_live(record, age, stale) else None
