"""Reading the results store: one experiment's card, trials and epochs.

    STORE/<sweep>/experiment.json        the experiment card (rows, metric, table, plot, ...)
    STORE/<sweep>/trials/*.parquet       one row per trial
    STORE/<sweep>/epochs/*.parquet       one row per (trial, epoch); a finished trial's in one file
    STORE/<sweep>/optuna.db              a search's Optuna study (SQLite; study name = sweep id)
    STORE/_ray/...                       Ray's own files (never read)

STORE is a local directory or a URI that `pyarrow.fs.FileSystem.from_uri` resolves
(`s3://bucket/prefix`; endpoint and credentials from the standard AWS variables). A sweep's
trials, and its epochs, are each read with one `pyarrow.dataset` scan.

Sweep ids end in a timestamp and a random suffix (`<experiment>-<preset>-YYYYmmdd-HHMMSS-xxxxxx`); the newest sweep of an
experiment is the default. Files are read with pyarrow and their schemas unified, so trials
written by different versions (differing column sets, int vs float) still combine; a file that
cannot be read is skipped with a warning rather than hiding every other one. Only pandas, pyarrow
and the standard library are used here (optuna only to open a study): the store is all analysis
needs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from .rows import read_rows
from .schema import (
    BEST_EPOCH,
    CARD_FILE,
    COMPLETED,
    EPOCH,
    EPOCHS_DIR,
    PARTIAL,
    ROW_KEYS,
    STATUS,
    STUDY_FILE,
    TRIAL_ID,
    TRIALS_DIR,
    ExperimentCard,
    StoreError,
    best_column,
    parse_card,
    sweep_order,
    visible,
)


@dataclasses.dataclass
class ExperimentData:
    """One experiment as stored: its card, trials and epochs (all statuses), and the sweeps read.
    include_running: tables and plots also show the partial trials (see `shown`); skipped: the
    files that could not be read ("path: error")."""

    card: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    sweeps: list[str]
    store: Path | str | None = None  # a local path, or the store's URI
    include_running: bool = False
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def parsed_card(self) -> ExperimentCard:
        """The card as its typed structure, with the defaults of fields an older card lacks."""
        return ExperimentCard.from_dict(self.card)

    @property
    def name(self) -> str:
        return self.parsed_card.experiment

    @property
    def preset(self) -> str:
        return self.parsed_card.preset

    @property
    def rows(self) -> list[str]:
        return self.parsed_card.rows

    @property
    def metric(self) -> str:
        return self.parsed_card.metric

    @property
    def mode(self) -> str:
        return self.parsed_card.mode

    @property
    def table(self) -> dict[str, Any]:
        return self.parsed_card.table

    @property
    def plot(self) -> dict[str, Any]:
        return self.parsed_card.plot

    def with_status(self, status=(COMPLETED,)) -> pd.DataFrame:
        """The trials whose status is one of `status` (all trials for None)."""
        if status is None or STATUS not in self.trials:
            return self.trials
        status = (status,) if isinstance(status, str) else tuple(status)
        return self.trials[self.trials[STATUS].isin(status)]

    def shown(self, status=(COMPLETED,)) -> pd.DataFrame:
        """The trials tables and plots show: those whose status is one of `status` (all for None),
        plus, with include_running, the partial ones at their best epoch so far."""
        if not self.include_running:
            return self.with_status(status)
        if status is not None:
            status = ((status,) if isinstance(status, str) else tuple(status)) + PARTIAL
        return best_so_far(self.with_status(status), self.epochs)

    def partial(self) -> pd.DataFrame:
        """The partial trials shown with include_running (none without it)."""
        return self.with_status(PARTIAL) if self.include_running else self.trials.iloc[:0]


def selected_epochs(epochs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per trial (`keys`), the epoch row its model selection holds so far: the epoch that its
    latest row's `best_epoch` names (the trainer's own choice, its tie-breaker included, so a
    reader never picks another "best" than the trial row). No row for a trial that has not been
    evaluated yet (`best_epoch` null or -1)."""
    if not len(epochs) or not {EPOCH, BEST_EPOCH, *keys} <= set(epochs.columns):
        return epochs.iloc[:0]
    latest = epochs.sort_values(EPOCH, kind="stable").groupby(keys).tail(1)
    chosen = latest[keys].assign(_chosen=pd.to_numeric(latest[BEST_EPOCH], errors="coerce"))
    rows = epochs.merge(chosen[chosen["_chosen"] >= 0], on=keys)
    rows = rows[pd.to_numeric(rows[EPOCH], errors="coerce") == rows["_chosen"]]
    return rows.drop(columns="_chosen").drop_duplicates(keys, keep="last")


def best_so_far(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The trials, partial ones given their best_<m> values (and best_epoch) from their epoch
    rows: those of the epoch the trainer's selection holds so far (`selected_epochs`). A value
    the trial row already holds is kept; a running trial's row is written before its first
    epoch, so its best_ columns stay null until it ends."""
    partial = trials[STATUS].isin(PARTIAL) if STATUS in trials else pd.Series(False, index=trials.index)
    keys = [c for c in ("sweep", TRIAL_ID) if c in trials and c in epochs]
    if not partial.any() or TRIAL_ID not in keys:
        return trials
    names = [c for c in epochs.columns if c.startswith(("val_", "test_")) or (best_column(c) in trials and c != EPOCH)]
    best = selected_epochs(epochs, keys)
    best = best[keys + names + [EPOCH]].rename(columns={**{n: best_column(n) for n in names}, EPOCH: BEST_EPOCH})
    picked = trials.loc[partial, keys].merge(best, on=keys, how="left").set_axis(trials.index[partial])
    out = trials.copy()
    for column in picked.columns.difference(keys):
        held = out[column] if column in out else pd.Series(float("nan"), index=out.index)
        out[column] = held.where(held.notna() | ~partial, picked[column].reindex(out.index))
    return out


@dataclasses.dataclass(frozen=True)
class StoreRoot:
    """Where a results store is: a `pyarrow.fs` filesystem and the store's path in it."""

    fs: pafs.FileSystem
    path: str
    uri: str
    local: bool

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def where(self, *parts: str) -> str:
        if self.local:
            return str(Path(self.uri if "://" not in self.uri else self.path, *parts))
        return f"{self.uri.split('://', 1)[0]}://{self.join(*parts)}"

    def __str__(self) -> str:
        return self.uri

    def info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def is_dir(self, path: str) -> bool:
        return self.info(path).type == pafs.FileType.Directory

    def is_file(self, path: str) -> bool:
        return self.info(path).type == pafs.FileType.File

    def listdir(self, path: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))

    def files(self, path: str, suffix: str = ".parquet") -> list[str]:
        return sorted(
            i.path for i in self.listdir(path) if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and visible(i.base_name)
        )

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as stream:
            return stream.read().decode()


def read_card(root: StoreRoot, sweep: str) -> dict[str, Any]:
    """A sweep's experiment card as written (its typed form: `ExperimentCard.from_dict`)."""
    where = root.where(sweep, CARD_FILE)
    try:
        text = root.read_text(root.join(sweep, CARD_FILE))
    except (OSError, UnicodeDecodeError) as error:
        raise StoreError(f"{where}: cannot read the experiment card ({error})") from None
    return parse_card(text, where)


def store_root(store: str | os.PathLike | StoreRoot) -> StoreRoot:
    """A store named by a local path or a URI, as a filesystem and a path (nothing checked)."""
    if isinstance(store, StoreRoot):
        return store
    text = os.fspath(store)
    if "://" not in text:
        return StoreRoot(pafs.LocalFileSystem(), str(Path(text).expanduser().absolute()), text, True)
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise StoreError(f"results store {text}: {first} (a local path, or a URI pyarrow.fs knows: s3://BUCKET/PREFIX)") from None
    return StoreRoot(filesystem, path.rstrip("/"), text, isinstance(filesystem, pafs.LocalFileSystem))


def _check_store(store: str | os.PathLike | StoreRoot) -> StoreRoot:
    root = store_root(store)
    try:
        kind = root.info(root.path).type
    except OSError as error:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        refused = any(word in text for word in ("ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"))
        why = f"the credentials were refused ({text})" if refused else f"cannot reach it ({text})"
        raise StoreError(f"results store {root}: {why}") from None
    if kind == pafs.FileType.NotFound:
        raise StoreError(f"results store {root} does not exist (dncml sweep ... --storage {root} creates it)")
    if kind != pafs.FileType.Directory:
        raise StoreError(f"results store {root} is not a directory")
    return root


def _scan(root: StoreRoot) -> tuple[dict[str, list[str]], dict[str, dict], list[str]]:
    """experiment -> sweep ids (oldest first), sweep id -> card, and sweep dirs without a card."""
    experiments: dict[str, list[str]] = {}
    cards: dict[str, dict] = {}
    uncarded: list[str] = []
    for directory in sorted(i.base_name for i in root.listdir(root.path) if i.type == pafs.FileType.Directory and visible(i.base_name)):
        if not root.is_file(root.join(directory, CARD_FILE)):
            if root.is_dir(root.join(directory, TRIALS_DIR)) or root.is_dir(root.join(directory, EPOCHS_DIR)):
                uncarded.append(directory)
            continue
        try:
            card = read_card(root, directory)
        except StoreError as error:  # one truncated card must not hide every other sweep
            warnings.warn(f"skipped sweep {directory}: {error}", stacklevel=2)
            uncarded.append(directory)
            continue
        name = str(card.get("experiment") or directory)
        cards[directory] = card
        experiments.setdefault(name, []).append(directory)
    for sweeps in experiments.values():
        sweeps.sort(key=sweep_order)
    return experiments, cards, uncarded


def list_experiments(store: str | Path) -> dict[str, list[str]]:
    """Experiment name -> its sweep ids in the store, oldest first (sweep dirs with a card only)."""
    return _scan(_check_store(store))[0]


def read_parquet_dir(
    directory: str | Path, skipped: list[str] | None = None, root: StoreRoot | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Every visible Parquet file of a store directory (`trials/` or `epochs/` of a sweep: a local
    path, or a path in `root`'s filesystem) as one DataFrame, with one `pyarrow.dataset` scan
    (`rows.read_rows`): schemas unified, one row per key (`schema.ROW_KEYS`: where a segment, a
    trial's compacted epochs and a per-epoch file hold the same row, the newest kind wins), an
    empty DataFrame when there is none. A file that cannot be read (corrupt, truncated by a full
    disk or a killed copy) is left out with a warning naming it, and "path: error" appended to
    `skipped`: one bad file must not hide the results of every other trial. `columns`: only
    those (the ones that exist) and the keys."""
    root = root or store_root(Path(directory).parent)
    path = str(directory) if not root.local else str(Path(directory).absolute())
    keys = ROW_KEYS.get(path.rstrip("/").rsplit("/", 1)[-1], (TRIAL_ID,))

    def where(file: str) -> str:
        return root.where(file[len(root.path) + 1 :]) if file.startswith(root.path + "/") else file

    table = read_rows(root.fs, root.files(path), keys, columns, skipped, where)
    return pd.DataFrame() if table is None else table.to_pandas()


def _require_completed(trials: pd.DataFrame, experiment: str, sweeps: list[str], include_running: bool) -> None:
    where = sweeps[0] if len(sweeps) == 1 else f"{len(sweeps)} sweeps ({', '.join(sweeps)})"
    if trials.empty or STATUS not in trials:
        raise StoreError(f"experiment {experiment!r}: no trials recorded yet in {where}")
    accepted = (COMPLETED,) + (PARTIAL if include_running else ())
    if trials[STATUS].isin(accepted).any():
        return
    counts = trials[STATUS].value_counts()
    summary = ", ".join(f"{int(n)} {status}" for status, n in counts.items())
    message = f"experiment {experiment!r}: no completed {'or running ' if include_running else ''}trials in {where} ({summary})"
    errors = trials["error"].dropna() if "error" in trials else pd.Series(dtype=object)
    errors = errors[errors.astype(str).str.strip() != ""]
    if len(errors):
        first = str(errors.iloc[0]).strip().splitlines()
        message += f"; first error: {first[-1] if first else ''}"[:600]
    raise StoreError(message)


def only_experiment(experiments: dict[str, list[str]], cards: dict[str, dict], sweep: str | None, root: Path) -> str:
    """The experiment meant when none is named: the named sweep's, else the store's only one."""
    if sweep not in (None, "all", "latest") and sweep in cards:
        return str(cards[sweep].get("experiment") or sweep)
    if len(experiments) == 1:
        return next(iter(experiments))
    if not experiments:
        raise StoreError(f"results store {root} holds no sweeps")
    raise StoreError(
        f"results store {root} holds {len(experiments)} experiments ({', '.join(sorted(experiments))}); name one with --experiment"
    )


def load_experiment(
    store: str | Path,
    experiment: str | None = None,
    sweep: str | None = None,
    require_completed: bool = True,
    include_running: bool = False,
) -> ExperimentData:
    """One experiment's card, trials and epochs.

    experiment: None -> the one the store holds (or the named sweep's).
    sweep: None or "latest" -> the newest sweep of the experiment; "all" -> every sweep of the
    experiment with the newest one's preset, concatenated (the newest sweep's card is used);
    otherwise a sweep id.
    require_completed: raise StoreError unless at least one trial completed (or, with
    include_running, is running or interrupted).
    include_running: tables and plots of the data also show the running and interrupted trials,
    at their best epoch so far (a sweep still going, or one stopped early).
    """
    root = _check_store(store)
    experiments, cards, uncarded = _scan(root)
    sweep = None if sweep == "latest" else sweep
    experiment = experiment or only_experiment(experiments, cards, sweep, root)
    if sweep not in (None, "all") and sweep not in cards:
        if root.is_dir(root.join(sweep)):
            raise StoreError(f"sweep {sweep!r} in {root} has no {CARD_FILE} (was it written by `dncml sweep`?)")
        known = ", ".join(experiments.get(experiment, [])) or "none"
        raise StoreError(f"no sweep {sweep!r} in {root}; sweeps of {experiment!r}: {known}")
    if not experiments:
        extra = f" (sweep dirs without {CARD_FILE}: {', '.join(uncarded)})" if uncarded else ""
        raise StoreError(f"results store {root} holds no sweeps{extra}")
    if experiment not in experiments:
        present = ", ".join(f"{name} ({len(s)} sweep{'s' if len(s) > 1 else ''})" for name, s in sorted(experiments.items()))
        extra = f"; sweep dirs without {CARD_FILE}: {', '.join(uncarded)}" if uncarded else ""
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

    skipped: list[str] = []
    trials = [read_parquet_dir(root.join(s, TRIALS_DIR), skipped, root) for s in chosen]
    epoch_frames = [read_parquet_dir(root.join(s, EPOCHS_DIR), skipped, root) for s in chosen]
    trials_df = _concat(trials, chosen)
    epochs_df = _concat(epoch_frames, chosen)
    if require_completed:
        _require_completed(trials_df, experiment, chosen, include_running)
    card = dict(cards[chosen[-1]])
    card.setdefault("experiment", experiment)
    return ExperimentData(
        card=card,
        trials=trials_df,
        epochs=epochs_df,
        sweeps=chosen,
        store=Path(root.uri) if root.local else root.uri,
        include_running=include_running,
        skipped=skipped,
    )


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


def load_study(store: str | Path, sweep: str):
    """The Optuna study of a search sweep (STORE/<sweep>/optuna.db, SQLite, study name = the
    sweep id), opened read-only; None when the sweep has none. A database that cannot be read
    or lacks the study also gives None, with a warning: the study only adds figures."""
    root = _check_store(store)
    if not root.is_file(root.join(sweep, STUDY_FILE)):
        return None
    import optuna
    import sqlalchemy.exc

    if root.local:
        path = Path(root.join(sweep, STUDY_FILE))
    else:  # a copy of the bucket's study on this machine (SQLite reads local files only)
        path = Path(tempfile.mkdtemp(prefix="dncml-study-")) / STUDY_FILE
        with root.fs.open_input_stream(root.join(sweep, STUDY_FILE)) as stream:
            path.write_bytes(stream.read())
    url = f"sqlite:///file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&uri=true"
    try:
        return optuna.load_study(study_name=sweep, storage=url)
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as error:
        warnings.warn(
            f"{root.where(sweep, STUDY_FILE)}: no readable Optuna study {sweep!r} ({type(error).__name__}: {error})", stacklevel=2
        )
        return None


def _local_store(path: Path) -> Path:
    _check_store(path)
    return path


def locate_store(store: str | Path, start: str | Path | None = None) -> Path | str:
    """A results store named as a notebook names it: an absolute path, or one relative to
    `start` (the current directory), else to the repository root (the nearest directory at or
    above `start` holding pyproject.toml), so `results` is found whether the notebook runs from
    the repository root or from analysis/notebooks."""
    if "://" in os.fspath(store):  # a URI (s3://bucket/prefix) is what it says
        return _check_store(store).uri
    path = Path(store).expanduser()
    start = Path.cwd() if start is None else Path(start)
    if path.is_absolute():
        return _local_store(path)
    if (start / path).exists():
        return _local_store(start / path)
    root = next((d for d in [start.resolve(), *start.resolve().parents] if (d / "pyproject.toml").is_file()), None)
    if root is not None and (root / path).exists():
        return _local_store(root / path)
    tried = ", ".join(str(d / path) for d in [start, root] if d is not None)
    where = "" if root is not None else f" (no pyproject.toml at or above {start}: no repository root)"
    raise StoreError(
        f"results store {str(store)!r} not found: tried {tried}{where}; set STORE to its path "
        f"(dncml sweep ... --storage {store} creates it)"
    )
