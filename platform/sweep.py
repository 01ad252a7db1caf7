"""`dncml sweep`: an experiment spec as a Ray Tune sweep of divide-and-conquer runs.

Ray 2.60 runs Ray Train V2, where a TorchTrainer is not a Tune trainable: each Tune trial is a
function that builds and fits a TorchTrainer (`fit_run`), with `TuneReportCallback` forwarding
the workers' reports to Tune (one `training_iteration` per epoch, which ASHA uses). Grids (the
ablations) run with Tune's default variant generator; searches run with a seeded OptunaSearch
(the two cannot be mixed). Every epoch of every trial lands in the results store under
STORE/<sweep>/, and `--resume` continues an interrupted sweep without re-running finished trials.

`--resume` unpickles nothing from the store (anyone who shares it could have written Tune's
`tuner.pkl` or the searcher's state): it rebuilds the sweep from what the store holds as data.
The experiment card (`experiment.json`) must exist and match the spec; a fresh Tuner runs the
sweep again, each trial claims the stored trial of its configuration (`claim_trial`): a completed
one reports its recorded result, failed and pruned ones keep their verdict, and the rest continue
from their Ray Train checkpoints (JSON bookkeeping, `torch.load(weights_only=True)` weights). A
search reopens its Optuna study (`tracking.resume_study`), evaluates the unfinished trials' points
first and samples only what is left of `num_samples`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray import tune

from dncml.analysis.schema import (
    COMPLETED,
    EPOCHS_DIR,
    FAILED,
    INTERRUPTED,
    PARTIAL,
    PRUNED,
    RUNNING,
    ExperimentCard,
    StoreError,
    best_column,
    spec_column,
    spec_field,
)
from dncml.experiments.loader import Experiment, load_experiment, sample_is_valid, short_value
from dncml.trainers.spec import SpecError, valid_name

from . import console, ray_compat
from .console import Bar, Progress, duration, epoch_line, log, timeline
from .console import summary as outcome
from .errors import PlatformError
from .store import ResultsStore, TrialRecorder, new_id, safe_name
from .train import Resources, connect, fit_run, prepare_data

TUNE_DIR = "tune"
TRIAL_CPU = 0.01  # the Tune trial's own bundle: tiny, but Tune refuses a CPU: 0 bundle


def _search_space(experiment: Experiment) -> dict:
    space = {}
    for name, distribution in experiment.search.items():
        kind, args = next(iter(distribution.items()))
        space[name] = {
            "uniform": lambda a: tune.uniform(a[0], a[1]),
            "loguniform": lambda a: tune.loguniform(a[0], a[1]),
            "choice": lambda a: tune.choice(list(a)),
            "randint": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),
            "quniform": lambda a: tune.quniform(a[0], a[1], a[2] if len(a) > 2 else 1),
        }[kind](args)
    return space


def spec_key(values: dict) -> str:
    """A RunSpec's fields as one comparable string (the key a resumed trial finds its row by)."""
    return json.dumps(values, sort_keys=True, default=str)


def stored_trials(store: ResultsStore, sweep: str) -> dict[str, list[dict]]:
    """The store's trial rows of a sweep by their RunSpec (`spec_key`), oldest first."""
    found: dict[str, list[dict]] = {}
    rows = sorted(store.trial_rows(sweep), key=lambda row: (row.get("started_at") or "", str(row.get("trial_id"))))
    for row in rows:
        if not valid_name(row.get("trial_id")):
            log.warning(f"sweep {sweep}: a trial row with the trial id {str(row.get('trial_id'))[:80]!r} is not resumed (not a valid name)")
            continue
        values = {spec_field(name): value for name, value in row.items() if spec_field(name) is not None}
        found.setdefault(spec_key(values), []).append(row)
    return found


def claim_trial(store: ResultsStore, claims: str, candidates: list[dict], tune_id: str) -> dict | None:
    """The first stored trial of this configuration that no other trial of this attempt has
    taken (one exclusively created file per stored trial, naming the Tune trial that took it:
    `ResultsStore.create_exclusive`, so trials on any node agree), or None."""
    for row in candidates:
        if store.create_exclusive(f"{claims}/{row['trial_id']}", tune_id):
            return row
    return None


def claimed(store: ResultsStore, claims: str) -> dict[str, str]:
    """Tune trial id -> the stored trial id it continues, for one attempt."""
    return {
        (store.read_text(info.path) or "").strip(): info.base_name
        for info in store.listdir(claims)
        if info.type == pafs.FileType.File and valid_name(info.base_name)
    }


def make_trial(
    experiment: Experiment, store_address: str, sweep: str, resources: Resources, stored: dict | None = None, claims: str | None = None
):
    def trial(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        timeline("trial start", trial_id)
        overrides = dict(config)
        reason = sample_is_valid(experiment, overrides)
        store = ResultsStore(store_address)
        spec = experiment.run_spec() if reason else experiment.run_spec(overrides)
        previous = claim_trial(store, claims, stored.get(spec_key(spec.to_dict()), []), trial_id) if stored and claims else None
        if previous is not None:
            trial_id = previous["trial_id"]  # a resumed sweep continues the store's trial of this configuration
            if previous.get("status") in (FAILED, PRUNED):
                return  # its recorded end stands (as it did for Tune: an errored trial is not run again)
        finished = None if reason else store.finished_trial(sweep, trial_id, spec.total_epochs)
        if finished:
            # A resumed sweep: the store already holds this trial, complete. Hand Tune the
            # recorded result instead of training it again.
            tune.report({k: v for k, v in finished[-1].items() if v is not None})
            return
        recorder = TrialRecorder(store, sweep, trial_id, spec, experiment.name, experiment.setting_label(config))
        if reason:
            recorder.fail(f"invalid sample: {reason}")
            raise SpecError(reason)
        try:
            prepare_data(spec, resources.num_workers)  # a bad dataset or weights fail here, before any worker starts
        except Exception as error:
            recorder.fail(error)
            raise
        fit_run(spec, trial_id, resources, store, sweep, recorder, extra_callbacks=(TuneReportCallback(),))

    return trial


class ProgressPrinter(tune.Callback):
    """One line per epoch per trial, labelled with the trial's setting, one per finished trial,
    and a progress line (done / running / pending, elapsed, ETA) every minute."""

    def __init__(
        self,
        experiment: Experiment,
        total: int,
        concurrency: int,
        finished: dict[str, str] | None = None,
        store: ResultsStore | None = None,
        sweep: str = "",
    ):
        self.experiment, self.store, self.sweep = experiment, store, sweep
        self.progress = Progress(total, experiment.run_spec().total_epochs, concurrency)
        # a resumed sweep: the trials the store holds as ended count from the start
        self.progress.finished.update(finished or {})
        self.progress.epochs.update(dict.fromkeys(finished or {}, self.progress.epochs_per_trial))
        self.bar = Bar(total, experiment.name, "trial", initial=len(finished or {}))

    def label(self, trial) -> str:
        """The trial's setting: its row fields, the values a search sampled, its seed."""
        config = Experiment.overrides(trial.config)
        shown = {
            **{r: config.get(r) for r in self.experiment.rows if r in config},
            **{name: short_value(config[name]) for name in self.experiment.search if name in config},
            **({"seed": config["seed"]} if "seed" in config else {}),
        }
        return " ".join(f"{k}={v}" for k, v in shown.items()) or trial.trial_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result and "total_epochs" in result:
            self.progress.epochs[trial.trial_id] = int(result["epoch"]) + 1
            log.info(epoch_line(self.label(trial), result, self.experiment.metric))

    def _end(self, trial, status: str, reason: str = "") -> None:
        if trial.trial_id not in self.progress.finished:
            best = (trial.last_result or {}).get(best_column(self.experiment.metric))
            self.bar.update(1, last=f"{self.label(trial)}: {status}", best=f"{best:.4f}" if isinstance(best, float) else None)
        self.progress.finished[trial.trial_id] = status
        result = trial.last_result or {}
        value = result.get(best_column(self.experiment.metric))
        shown = f" {self.experiment.metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        log.info(f"[{self.label(trial)}] {status}{shown}{reason}")
        log.info(self.progress.line())

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        stopped = "epoch" in result and "total_epochs" in result and int(result["epoch"]) + 1 < int(result["total_epochs"])
        self._end(trial, PRUNED if stopped else COMPLETED)  # ASHA ends a trial it stops as a completed one

    def on_trial_error(self, iteration, trials, trial, **info):
        # One line: the reason (the store's trial row has it too); Tune keeps the traceback in
        # the trial's error.txt (and prints it with -v).
        where = f" (traceback: {trial.error_file})" if getattr(trial, "error_file", None) else ""
        self._end(trial, "FAILED", f": {self.reason(trial)}{where}")

    def reason(self, trial) -> str:
        """Why a trial failed, in one line: the error its row in the store records (the trial
        wrote it), else the last line of Tune's error (when Tune has it yet)."""
        row = self.store.trial_row(self.sweep, trial.trial_id) if self.store is not None else None
        text = str((row or {}).get("error") or "")
        recorded = [line.strip() for line in text.splitlines() if line.strip()]
        if not recorded:
            return _error_line(trial.get_error())
        # `Type: message` as the trial recorded it: its first line; a traceback: its last
        return (recorded[-1] if "Traceback" in text else recorded[0])[:1000]

    def on_step_end(self, iteration, trials, **info):
        if self.progress.due():
            log.info(self.progress.line())

    def on_experiment_end(self, trials, **info):
        self.bar.close()


class NoTuneTensorBoard(tune.logger.TBXLoggerCallback):
    """In place of Tune's own TensorBoard logger, which Tune adds unless one is given: the store
    already holds one event directory per trial (`STORE/<sweep>/tensorboard/<trial>/`), and a
    second copy under Tune's trial directories would show every run twice (with Tune's
    bookkeeping counters as scalars). Tune's CSV and JSON result files stay."""

    def log_trial_start(self, trial) -> None:
        pass

    def log_trial_result(self, iteration, trial, result) -> None:
        pass

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass


class SweepMonitor(tune.Callback):
    """Stops a sweep whose first trials all fail before any trial reports an epoch: a broken
    environment (missing code or data on the workers, a bad runtime environment) fails every
    trial the same way, and starting the rest only repeats the error. `threshold` failures with
    no result anywhere trigger it; one bad grid point among good ones does not (the good ones
    report first)."""

    def __init__(self, threshold: int):
        self.threshold, self.failed, self.reported, self.triggered = threshold, 0, False, False
        self.first_error: str | None = None
        self.trials: list = []
        self.statuses: dict[str, str] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reported = True

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self.first_error = self.first_error or _error_line(trial.get_error())
        self.triggered = self.triggered or (not self.reported and self.failed >= self.threshold)

    def on_step_end(self, iteration, trials, **info):
        # Tune's own trials and their status after every step: once fit() returns, the statuses
        # have been overwritten by its cleanup (and on_experiment_end only runs when every
        # trial finished), so the last snapshot is how the sweep really ended.
        self.trials, self.statuses = trials, {trial.trial_id: trial.status for trial in trials}

    def ended(self) -> dict[str, tuple[str, dict, str | None]]:
        """Trial id -> (Tune status, config, error line) as the sweep ended: TERMINATED, ERROR,
        or (interrupted) RUNNING / PENDING / PAUSED."""
        out = {}
        for trial in self.trials:
            status = self.statuses.get(trial.trial_id, trial.status)
            error = trial.get_error() if status == "ERROR" else None
            out[trial.trial_id] = (status, dict(trial.config), None if error is None else _error_line(error))
        return out

    def interrupted(self, total: int) -> bool:
        """Fewer than `total` trials ended, and not by the early stop: Ctrl-C (or SIGTERM)."""
        finished = sum(status in ("TERMINATED", "ERROR") for status in self.statuses.values())
        return not self.triggered and finished < total

    def stopper(self) -> StopWhen:
        return StopWhen(self)


class StudyCopy(tune.Callback):
    """After every finished trial, the search's Optuna study copied into the store
    (`ResultsStore.save_study`: a no-op where the study already lives in the store)."""

    def __init__(self, store: ResultsStore, sweep: str, given: str | None):
        self.store, self.sweep, self.given = store, sweep, given

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.store.save_study(self.sweep, self.given)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.store.save_study(self.sweep, self.given)

    def on_experiment_end(self, trials, **info):
        self.store.save_study(self.sweep, self.given)


class StoreCompaction(tune.Callback):
    """Whenever a trial ends, the store merges ended trials into segments
    (`ResultsStore.compact_sweep`), so that readers of a big sweep read few files. The driver
    alone does it: it holds the sweep's lease; a trial process removes only its own per-epoch files."""

    def __init__(self, store: ResultsStore, sweep: str):
        self.store, self.sweep = store, sweep

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.merge()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.merge()

    def merge(self) -> None:
        try:
            self.store.compact_sweep(self.sweep)
        except (OSError, pa.ArrowException, StoreError) as error:  # a speed-up only: the sweep goes on, the files stay as they are
            log.warning(f"store: could not merge ended trials into a segment ({error}); the next trial's end tries again")


class StopWhen(tune.stopper.Stopper):
    """Tune's way to end a whole sweep: `stop_all` as soon as the monitor has triggered."""

    def __init__(self, monitor: SweepMonitor):
        self.monitor = monitor

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.monitor.triggered


def _sweep_id(experiment: Experiment, store: ResultsStore, resume: bool, chosen: str | None = None) -> str:
    prefix = f"{safe_name(experiment.name, 'experiment name')}-{experiment.preset or 'default'}-"
    if chosen and not resume:
        raise PlatformError("--sweep ID names the sweep to continue: it needs --resume")
    if resume:
        if chosen:
            safe_name(chosen, "--sweep")
            if not store.is_dir(store.sweep_dir(chosen)):
                raise PlatformError(f"--resume --sweep {chosen}: no such sweep in {store.where()}")
            sweep = chosen
        else:
            # Only sweeps that this store's own card describes: a folder without experiment.json
            # (or one planted beside them) is nothing this store started.
            candidates = [s for s in store.sweeps_of(prefix) if store.is_file(store.card_path(s))]
            if not candidates:
                raise PlatformError(f"--resume: no sweep of {experiment.name} (preset {experiment.preset}) in {store.where()} to resume")
            sweep = candidates[-1]
        refuse_links(store, sweep)
        check_same_experiment(store, sweep, experiment)
        log.info(f"resuming sweep {sweep} (choose another with --sweep ID)")
        return sweep
    return new_id(prefix.rstrip("-"))


def refuse_links(store: ResultsStore, sweep: str) -> None:
    """A sweep's folders must be its own: a symlink would send every write somewhere else (object
    stores have none)."""
    if not store.local:
        return
    for path in (Path(store.sweep_dir(sweep)), Path(store.path("_ray")), Path(store.ray_dir(sweep))):
        if path.is_symlink():
            raise PlatformError(f"{path} is a symbolic link: refused (a sweep's folders hold its own files only)")


def check_same_experiment(store: ResultsStore, sweep: str, experiment: Experiment) -> None:
    """`--resume` continues the sweep it started, not a changed one: the runs, axes and search
    must be those of the stored experiment card."""
    try:
        stored = store.read_card(sweep)
    except (OSError, ValueError) as error:
        raise PlatformError(f"--resume: the experiment card of sweep {sweep} cannot be read ({str(error)[:200]}): refused") from None
    if stored is None:
        raise PlatformError(f"--resume: sweep {sweep} has no experiment card (experiment.json): nothing this store started, refused")
    current = ExperimentCard.from_dict(json.loads(json.dumps(experiment.card(sweep), default=str)))
    changed = [key for key in ExperimentCard.RESUME_KEYS if getattr(stored, key) != getattr(current, key)]
    if changed:
        details = "; ".join(f"{key}: {getattr(stored, key)!r} -> {getattr(current, key)!r}" for key in changed)
        raise PlatformError(
            f"--resume: sweep {sweep} was started from a different experiment spec ({details[:1500]}); "
            "resume it with the same spec, or start a new sweep without --resume"
        )


def concurrency(experiment: Experiment, resources: Resources, requested: int | None) -> int:
    """Trials x (workers x CPUs per worker + the trial's own bundle) must fit the cluster: Tune
    does not count the trainers' own placement groups, so an over-subscribed sweep waits
    forever. (On 2 CPUs, two trials of one 1-CPU worker do not fit: 2 x 1.01 > 2; the glyph
    presets ask for 0.99 CPU per worker so that two trials share the two cores.)"""
    cpus = ray.cluster_resources().get("CPU", 0)
    per_trial = resources.num_workers * resources.cpus_per_worker + TRIAL_CPU
    if per_trial > cpus:
        raise PlatformError(
            f"one trial needs {per_trial:g} CPUs ({resources.num_workers} workers x "
            f"{resources.cpus_per_worker:g} + {TRIAL_CPU:g} for the trial); the cluster has {cpus:g}"
        )
    if resources.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_trial_gpu = resources.num_workers * (resources.gpus_per_worker or 1)
        if per_trial_gpu > gpus:
            raise PlatformError(f"one trial needs {per_trial_gpu:g} GPUs; the cluster has {gpus:g}")
        fit = int(min(cpus // per_trial, gpus // per_trial_gpu))
    else:
        fit = int(cpus // per_trial)
    limit = requested or experiment.max_concurrent or fit
    return max(1, min(limit, fit))


def run_sweep(
    spec_path: str | Experiment,
    preset: str | None = None,
    address: str | None = None,
    storage: str = "results",
    resume: bool = False,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    mlflow_uri: str | None = None,
    sweep_id: str | None = None,
    optuna_storage: str | None = None,
    overrides: list[str] | None = None,
):
    """Run (or with resume, continue) the experiment's sweep; returns a `SweepResult` (which
    unpacks as `(sweep id, status counts)`). spec_path: the experiment's spec file or name, or
    the `Experiment` already loaded (the command line loads it before Ray is imported; the sweep
    then uses that one object throughout, and `preset` / `overrides` only name what it was loaded
    with in the resume command). overrides: `--set run.FIELD=VALUE` / `grid.AXIS=[...]` over the
    preset."""
    started = time.time()
    if isinstance(spec_path, Experiment):
        experiment, spec_path = spec_path, str(spec_path.path)
    else:
        experiment = load_experiment(spec_path, preset, overrides)  # every grid point validated here
    store = ResultsStore(storage)
    store.check()  # an unreachable store, a missing bucket: one line, before Ray starts
    sweep = _sweep_id(experiment, store, resume, sweep_id)
    lease = store.lease(sweep, "sweep")  # a filesystem without a safe lease is refused here
    resources = Resources.from_dict(experiment.resources)
    check_data_everywhere(experiment, resources.num_workers)  # every grid point and search corner, before Ray starts
    if mlflow_uri and importlib.util.find_spec("mlflow") is None:
        raise PlatformError(f"--mlflow {mlflow_uri}: MLflow is not installed here; pip install 'dncml[mlflow]' (mlflow-skinny)")
    connect(address, num_cpus=num_cpus)
    limit = concurrency(experiment, resources, max_concurrent)
    storage_path, storage_filesystem = store.ray_storage(sweep)
    # A resumed sweep is a fresh Tune experiment of its own (nothing of the last attempt's Tune
    # state is read back); its trials find their stored rows through `claims`.
    attempt = TUNE_DIR if not resume else f"{TUNE_DIR}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    claims = store.path("_ray", sweep, f"claims-{attempt}")
    stored = stored_trials(store, sweep) if resume else None
    num_samples, points, done = experiment.num_samples, [], 0
    if resume and experiment.search:
        store.restore_study(sweep, optuna_storage)  # a resume on another machine: the study from the store
        rows = [row for group in stored.values() for row in group]
        unfinished = [row for row in rows if row.get("status") in PARTIAL]
        done = len(rows) - len(unfinished)
        points = [{name: row.get(spec_column(runspec_field(name))) for name in experiment.search} for row in unfinished]
        num_samples = max(0, experiment.num_samples - done)
        from .tracking import resume_study

        resume_study(store.study_url(sweep, optuna_storage), sweep, rows, best_column(experiment.metric))
    trainable = tune.with_resources(
        make_trial(experiment, store.address, sweep, resources, stored, claims if resume else None), {"CPU": TRIAL_CPU}
    )
    total = num_samples if experiment.search else experiment.trial_count
    log.info(
        f"sweep {sweep}: {experiment.name}, preset {experiment.preset}, {total} trial(s)"
        + (f" ({done} finished before, not sampled again)" if done else "")
        + f", {limit} at a time, {resources.num_workers} worker(s) each; store {store.where(sweep)}"
    )
    monitor = SweepMonitor(threshold=min(total, max(2, limit)))
    # A resumed grid runs every trial again (the finished ones hand Tune their stored result at
    # once), so it counts from 0; a resumed search samples only what is left, so its finished
    # trials count from the start.
    ended = {t: s for t, s in store.statuses(sweep).items() if s in (COMPLETED, PRUNED, FAILED)} if resume and experiment.search else {}
    printer = ProgressPrinter(experiment, total + len(ended), limit, ended, store, sweep)
    callbacks = [printer, monitor, NoTuneTensorBoard(), StoreCompaction(store, sweep)]
    if mlflow_uri:
        from .tracking import MLflowCallback

        callbacks.append(MLflowCallback(mlflow_uri, experiment, sweep))
    if experiment.search:
        callbacks.append(StudyCopy(store, sweep, optuna_storage))
    tuner = tune.Tuner(
        trainable,
        param_space=_param_space(experiment),
        tune_config=_tune_config(experiment, limit, store, sweep, optuna_storage, num_samples, points, seed_offset=done),
        run_config=tune.RunConfig(
            name=attempt,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=callbacks,
            verbose=0,
            stop=monitor.stopper(),
            failure_config=tune.FailureConfig(fail_fast=False),
        ),
    )
    with lease:  # a second `--resume` of this sweep is refused while it runs
        store.write_card(sweep, experiment.card(sweep))
        if total:
            console.handle_sigterm(graceful=True)  # SIGTERM stops Tune as Ctrl-C does: trials end, state is saved
            try:
                tuner.fit()
            finally:
                console.handle_sigterm()
                printer.bar.close()
        summary = reconcile(store, sweep, experiment, monitor, claimed(store, claims))
        store.compact_sweep(sweep, final=True)  # the ended trials left over, in one last segment
    if monitor.triggered:
        summary["stopped early"] = 1
        outcome.warning(
            f"sweep {sweep} stopped early: its first {monitor.failed} trial(s) failed before any trial reported "
            f"an epoch, so the rest would fail the same way. First error: {monitor.first_error}"
        )
    if monitor.interrupted(total):
        summary["interrupted sweep"] = 1
        outcome.warning(
            f"sweep {sweep} interrupted. Resume it with:\n  dncml sweep {spec_path}"
            + (f" --preset {experiment.preset}" if experiment.preset else "")
            + "".join(f" --set {shlex.quote(item)}" for item in overrides or [])
            + f" --storage {store.uri} --resume --sweep {sweep}"
        )
    else:
        outcome.info(
            f"sweep {sweep} done in {duration(time.time() - started)}: " + ", ".join(f"{n} {status}" for status, n in summary.items() if n)
        )
    outcome.info(f"results: {store.where(sweep)}  (dncml table {store.uri} --experiment {experiment.name})")
    return SweepResult(sweep, summary, store.address, experiment.name, experiment.metric, experiment.mode)


class SweepResult:
    """What `run_sweep` returns, as Tune's ResultGrid does: the sweep id, its status counts, the
    trials and epochs as DataFrames (read from the results store), the best trial and its
    validation-selected checkpoint. Unpacks as `(sweep id, status counts)`, as before:
    `sweep, summary = run_sweep(...)`."""

    def __init__(self, sweep: str, summary: dict[str, int], store: str, experiment: str, metric: str, mode: str):
        self.sweep, self.summary, self.store, self.experiment, self.metric, self.mode = sweep, summary, store, experiment, metric, mode

    def __iter__(self):
        return iter((self.sweep, self.summary))

    def __getitem__(self, index: int):
        return (self.sweep, self.summary)[index]

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.summary.items())
        return f"SweepResult({self.sweep!r}: {counts}; store {self.store})"

    @property
    def trials(self):
        """One row per trial (status, error, spec_* fields, best_* and final_* metrics)."""
        import pandas as pd

        return pd.DataFrame(ResultsStore(self.store).trial_rows(self.sweep))

    @property
    def epochs(self):
        """One row per trial and epoch, in trial and epoch order."""
        import pandas as pd

        store = ResultsStore(self.store)
        table = store.read_rows(store.path(self.sweep, EPOCHS_DIR))  # sorted by (trial, epoch)
        return pd.DataFrame() if table is None else pd.DataFrame(table.to_pylist())

    @property
    def best_trial(self):
        """The completed trial with the best `best_<metric>` (the sweep's selection metric and
        mode), as a row of `trials`; None when no trial completed."""
        trials = self.trials
        column = best_column(self.metric)
        if trials.empty or column not in trials:
            return None
        completed = trials[(trials["status"] == COMPLETED) & trials[column].notna()]
        if completed.empty:
            return None
        return completed.loc[completed[column].idxmax() if self.mode == "max" else completed[column].idxmin()]

    @property
    def best_checkpoint(self) -> str | None:
        """The best trial's checkpoint of its validation-selected epoch (`dncml embed` reads it)."""
        best = self.best_trial
        return None if best is None else ResultsStore(self.store).selected_checkpoint(self.sweep, str(best["trial_id"]))


def check_data_everywhere(experiment: Experiment, num_workers: int) -> None:
    """The data-dependent checks (`check_against_data`: K against the training classes per
    worker, gt_labels against the dataset's groups, the batch's classes) for the base run, every
    grid point and every search corner, as the spec checks are: a point that would fail on its
    data fails here, naming it, before Ray starts. Each distinct dataset is read (or rendered)
    once, on the driver, as `prepare_data` does for the base run (whose backbone weights it also
    checks)."""
    from dncml.experiments.loader import checked_specs
    from dncml.trainers.data.loading import DATA_FIELDS
    from dncml.trainers.spec import check_against_data

    bundles: dict[tuple, tuple[int, bool]] = {}
    for index, (where, spec) in enumerate(checked_specs(experiment)):
        key = tuple(getattr(spec, f) for f in DATA_FIELDS)
        try:
            if key not in bundles:
                bundle = prepare_data(spec, num_workers) if index == 0 else _load(spec)
                bundles[key] = (len(set(bundle.train.labels.tolist())), bundle.train.has_groups)
            check_against_data(spec, *bundles[key], num_workers)
        except (SpecError, ValueError) as error:
            raise PlatformError(f"{experiment.path}: {where}: {error}") from None


def _load(spec):
    from dncml.trainers.data.loading import load_dataset

    return load_dataset(spec, progress=True)


def _error_line(error: BaseException | None) -> str:
    """The telling part of a trial's error: Tune wraps it (RayTaskError, TuneError) around the
    original exception, whose last line names what went wrong."""
    if error is None:
        return "unknown"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else type(error).__name__


def _param_space(experiment: Experiment) -> dict:
    if experiment.search:
        return _search_space(experiment)
    return {axis: tune.grid_search(values) for axis, values in experiment.grid.items()}


def runspec_field(name: str) -> str:
    from dncml.trainers.spec import ALIASES

    return ALIASES.get(name, name)


def _tune_config(
    experiment: Experiment,
    limit: int,
    store: ResultsStore,
    sweep: str,
    optuna_storage_url: str | None,
    num_samples: int,
    points: list[dict] = (),
    seed_offset: int = 0,
) -> tune.TuneConfig:
    scheduler = None
    if experiment.asha:
        from ray.tune.schedulers import ASHAScheduler

        # Our own `epoch` as the time axis: Tune's training_iteration restarts at 1 when a
        # sweep is restored, the epoch a resumed run reports does not.
        scheduler = ASHAScheduler(
            metric=best_column(experiment.metric),
            mode=experiment.mode,
            time_attr="epoch",
            grace_period=int(experiment.asha.get("grace_period", 2)),
            reduction_factor=float(experiment.asha.get("reduction_factor", 2)),
            max_t=experiment.run_spec().total_epochs,
        )
    if experiment.search:
        # OptunaSearch needs metric and mode itself: TuneConfig's are not passed through when
        # the search space is given to Tune.
        from .tracking import optuna_storage

        given = optuna_storage_url

        # The study lives in the store (SQLite), under the sweep's id: `optuna.load_study` and
        # optuna-dashboard open it, and `dncml plot` draws Optuna's own figures from it. A store
        # on object storage keeps it on this machine's disk (or at --optuna-storage) and gets a
        # copy after every finished trial (StudyCopy).
        search = optuna_search()(
            metric=best_column(experiment.metric),
            mode=experiment.mode,
            # a resumed search samples on from a new seed (the old one would repeat its first picks)
            seed=int(experiment.run.get("seed", 0)) + seed_offset,
            study_name=sweep,
            storage=optuna_storage(store.prepare_study(sweep, given)),
            points_to_evaluate=list(points) or None,
        )
        return tune.TuneConfig(
            search_alg=search, num_samples=num_samples, max_concurrent_trials=limit, scheduler=scheduler, reuse_actors=True
        )
    metric = {} if scheduler else {"metric": best_column(experiment.metric), "mode": experiment.mode}
    return tune.TuneConfig(**metric, num_samples=num_samples, max_concurrent_trials=limit, scheduler=scheduler, reuse_actors=True)


DNCML_TRIAL_ID = "dncml_trial_id"  # the Optuna trial's user attribute naming its trial in the store


def optuna_search():
    """Ray's OptunaSearch, telling the study what ASHA did: Ray's own `on_trial_complete` tells
    COMPLETE for every trial that reported a value, so a trial ASHA stopped early (its last
    epoch short of its total) would count as a finished one. Here it is PRUNED (Optuna then keeps
    its last intermediate value), and every Optuna trial names its dncml trial id in
    `user_attrs["dncml_trial_id"]` (the store's `trial_id`)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class Search(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot_trial = ray_compat.optuna_trial(self, trial_id)
            if ot_trial is None or ray_compat.optuna_trial_told(self, trial_id):
                return super().on_trial_complete(trial_id, result, error)
            ot_trial.set_user_attr(DNCML_TRIAL_ID, trial_id)
            epoch, total = (result or {}).get("epoch"), (result or {}).get("total_epochs")
            if not error and epoch is not None and total is not None and int(epoch) + 1 < int(total):
                try:
                    ray_compat.optuna_study(self).tell(ot_trial, state=TrialState.PRUNED)
                except Exception as exc:  # as Ray's own: a study that refuses the tell is logged
                    log.warning(f"optuna: {exc}")
                ray_compat.mark_optuna_trial_told(self, trial_id)
                return None
            return super().on_trial_complete(trial_id, result, error)

    return Search


def reconcile(
    store: ResultsStore, sweep: str, experiment: Experiment, monitor: SweepMonitor, ids: dict[str, str] | None = None
) -> dict[str, int]:
    """Make the store's trial rows agree with how Tune left each trial. A row still `running`
    (or missing) belongs to a trial that Tune ended in error ('failed': it died before recording
    its failure), stopped early ('pruned' by ASHA; 'interrupted' when the whole sweep was stopped)
    or never let finish (Ctrl-C: 'interrupted', and `--resume` runs it again)."""
    rows = {row["trial_id"]: row for row in store.trial_rows(sweep, ["trial_id", "status"])}  # one read, not one per trial
    for tune_id, (status, config, error) in monitor.ended().items():
        trial_id = (ids or {}).get(tune_id, tune_id)  # a resumed trial continues a stored one
        row = rows.get(trial_id)
        if row is not None and row.get("status") != RUNNING:
            continue  # the trial recorded its own end
        if row is None and status != "ERROR":
            continue  # never started: nothing to record
        spec = experiment.run_spec() if sample_is_valid(experiment, config) else experiment.run_spec(config)
        recorder = TrialRecorder(store, sweep, trial_id, spec, experiment.name, experiment.setting_label(config), start=False)
        if status == "ERROR":
            recorder.fail(error or "Tune ended the trial in error")
        elif status == "TERMINATED" and experiment.asha and not monitor.triggered:
            recorder.finish(PRUNED)
        else:
            reason = "the sweep stopped early" if monitor.triggered else "the sweep was interrupted"
            recorder.finish(INTERRUPTED, error=f"{reason} before this trial finished")
    statuses = list(store.statuses(sweep).values())
    return {status: statuses.count(status) for status in dict.fromkeys(statuses)}
