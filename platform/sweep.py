"""`dncml sweep`: an experiment spec as a Ray Tune sweep of divide-and-conquer runs.

Ray 2.60 runs Ray Train V2, where a TorchTrainer is not a Tune trainable: each Tune trial is a
function that builds and fits a TorchTrainer (`fit_run`), with `TuneReportCallback` forwarding
the workers' reports to Tune (one `training_iteration` per epoch, which ASHA uses). Grids (the
ablations) run with Tune's default variant generator; searches run with a seeded OptunaSearch
(the two cannot be mixed). Every epoch of every trial lands in the results store under
STORE/<sweep>/, and `--resume` continues an interrupted sweep with `Tuner.restore` without
re-running finished trials.
"""
from __future__ import annotations

import math
import time

import ray
from ray import tune

from dncml.experiments.loader import Experiment, load_experiment, sample_is_valid
from dncml.trainers.spec import SpecError

from .store import ResultsStore, TrialRecorder
from .errors import PlatformError
from .train import Resources, connect, fit_run, prepare_data

TUNE_DIR = "tune"
TRIAL_CPU = 0.01  # the Tune trial's own bundle: tiny, but Tune refuses a CPU: 0 bundle


def _search_space(experiment: Experiment) -> dict:
    space = {}
    for name, distribution in experiment.search.items():
        kind, args = next(iter(distribution.items()))
        space[name] = {
            "uniform": lambda a: tune.uniform(a[0], a[1]), "loguniform": lambda a: tune.loguniform(a[0], a[1]),
            "choice": lambda a: tune.choice(list(a)), "randint": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),
            "quniform": lambda a: tune.quniform(a[0], a[1], a[2] if len(a) > 2 else 1),
        }[kind](args)
    return space


def preflight(spec) -> None:
    """Fail a trial fast, before any Ray Train worker starts, on what a spec's data and model
    construction reject (a dataset that cannot be read, weights that cannot be loaded)."""
    from dncml.trainers.model import build_backbone

    build_backbone(spec, prepare_data(spec).channels)


def make_trial(experiment: Experiment, store_root: str, sweep: str, resources: Resources):
    def trial(config: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_id = tune.get_context().get_trial_id()
        overrides = dict(config)
        reason = sample_is_valid(experiment, overrides)
        store = ResultsStore(store_root)
        spec = experiment.run_spec() if reason else experiment.run_spec(overrides)
        finished = None if reason else store.finished_trial(sweep, trial_id, spec.total_epochs)
        if finished:
            # A resumed sweep: the store already holds this trial, complete. Hand Tune the
            # recorded result instead of training it again.
            tune.report({k: v for k, v in finished[-1].items() if v is not None})
            return
        recorder = TrialRecorder(store, sweep, trial_id, spec, experiment.name, experiment.setting_label(config))
        if reason:
            recorder.finish("failed", error=f"invalid sample: {reason}")
            raise SpecError(reason)
        try:
            preflight(spec)
        except Exception as error:
            recorder.finish("failed", error=f"{type(error).__name__}: {error}"[:4000])
            raise
        fit_run(spec, trial_id, resources, store, sweep, recorder, extra_callbacks=(TuneReportCallback(),))

    return trial


class ProgressPrinter(tune.Callback):
    """One concise line per finished trial (Tune's own table is kept quiet)."""

    def __init__(self, experiment: Experiment, total: int):
        self.experiment, self.total, self.done, self.started = experiment, total, 0, time.time()

    def _line(self, trial, status: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        value = result.get(f"best_{self.experiment.metric}", result.get(self.experiment.metric))
        shown = f"{self.experiment.metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        label = ", ".join(f"{k}={v}" for k, v in trial.config.items())
        print(f"[{self.done}/{self.total}, {time.time() - self.started:.0f}s] {trial.trial_id} ({label}): {status} {shown}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")


def _sweep_id(experiment: Experiment, store: ResultsStore, resume: bool) -> str:
    prefix = f"{experiment.name}-{experiment.preset or 'default'}-"
    if resume:
        candidates = sorted(p.name for p in store.root.glob(prefix + "*")
                            if (store.root / "_ray" / p.name / TUNE_DIR).is_dir())
        if not candidates:
            raise PlatformError(f"--resume: no sweep of {experiment.name} (preset {experiment.preset}) in {store.root} to resume")
        return candidates[-1]
    return prefix + time.strftime("%Y%m%d-%H%M%S")


def concurrency(experiment: Experiment, resources: Resources, requested: int | None) -> int:
    """Trials x (workers x CPUs per worker + the trial's own bundle) must fit the cluster: Tune
    does not count the trainers' own placement groups, so an over-subscribed sweep waits
    forever. (On 2 CPUs, two trials of one 1-CPU worker do not fit: 2 x 1.01 > 2; the glyph
    presets ask for 0.99 CPU per worker so that two trials share the two cores.)"""
    cpus = ray.cluster_resources().get("CPU", 0)
    per_trial = resources.num_workers * resources.cpus_per_worker + TRIAL_CPU
    if per_trial > cpus:
        raise PlatformError(f"one trial needs {per_trial:g} CPUs ({resources.num_workers} workers x "
                            f"{resources.cpus_per_worker:g} + {TRIAL_CPU:g} for the trial); the cluster has {cpus:g}")
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


def run_sweep(spec_path: str, preset: str | None = None, address: str | None = None, storage: str = "results",
              resume: bool = False, max_concurrent: int | None = None, num_cpus: int | None = None):
    experiment = load_experiment(spec_path, preset)  # every grid point validated here
    store = ResultsStore(storage)
    sweep = _sweep_id(experiment, store, resume)
    resources = Resources.from_dict(experiment.resources)
    connect(address, num_cpus=num_cpus)
    limit = concurrency(experiment, resources, max_concurrent)
    prepare_data(experiment.run_spec())  # render / check the base dataset once, on the driver
    tune_root = (store.root / "_ray" / sweep).resolve()
    trainable = tune.with_resources(make_trial(experiment, str(store.root.resolve()), sweep, resources), {"CPU": TRIAL_CPU})
    total = experiment.trial_count
    print(f"sweep {sweep}: {experiment.name}, preset {experiment.preset}, {total} trial(s), "
          f"{limit} at a time, {resources.num_workers} worker(s) each; store {store.root / sweep}", flush=True)
    callbacks = [ProgressPrinter(experiment, total)]
    if resume:
        tuner = tune.Tuner.restore(str(tune_root / TUNE_DIR), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(experiment),
            tune_config=_tune_config(experiment, limit),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(tune_root), callbacks=callbacks, verbose=0,
                                      failure_config=tune.FailureConfig(fail_fast=False)),
        )
    write_experiment_card(store, sweep, experiment)
    results = tuner.fit()
    summary = reconcile(store, sweep, experiment, results)
    print(f"sweep {sweep} done: " + ", ".join(f"{n} {status}" for status, n in summary.items() if n))
    print(f"results: {store.root / sweep}  (dncml table {store.root} --experiment {experiment.name})")
    return sweep, summary


def _param_space(experiment: Experiment) -> dict:
    if experiment.search:
        return _search_space(experiment)
    return {axis: tune.grid_search(values) for axis, values in experiment.grid.items()}


def _tune_config(experiment: Experiment, limit: int) -> tune.TuneConfig:
    scheduler = None
    if experiment.asha:
        from ray.tune.schedulers import ASHAScheduler

        # Our own `epoch` as the time axis: Tune's training_iteration restarts at 1 when a
        # sweep is restored, the epoch a resumed run reports does not.
        scheduler = ASHAScheduler(metric=f"best_{experiment.metric}", mode=experiment.mode, time_attr="epoch",
                                  grace_period=int(experiment.asha.get("grace_period", 2)),
                                  reduction_factor=float(experiment.asha.get("reduction_factor", 2)),
                                  max_t=experiment.run_spec().total_epochs)
    if experiment.search:
        from ray.tune.search.optuna import OptunaSearch

        # OptunaSearch needs metric and mode itself: TuneConfig's are not passed through when
        # the search space is given to Tune.
        search = OptunaSearch(metric=f"best_{experiment.metric}", mode=experiment.mode,
                              seed=int(experiment.run.get("seed", 0)))
        return tune.TuneConfig(search_alg=search, num_samples=experiment.num_samples, max_concurrent_trials=limit,
                               scheduler=scheduler)
    metric = {} if scheduler else {"metric": f"best_{experiment.metric}", "mode": experiment.mode}
    return tune.TuneConfig(**metric, num_samples=experiment.num_samples, max_concurrent_trials=limit, scheduler=scheduler)


def write_experiment_card(store: ResultsStore, sweep: str, experiment: Experiment) -> None:
    """What `analysis/` needs to know about the sweep (rows, metric, the table's labels and the
    paper's numbers), stored beside its Parquet tables so analysis reads the store alone."""
    import json
    import os

    card = {"experiment": experiment.name, "preset": experiment.preset, "sweep": sweep,
            "description": experiment.description, "rows": experiment.rows, "metric": experiment.metric,
            "mode": experiment.mode, "grid": experiment.grid, "search": experiment.search,
            "num_samples": experiment.num_samples, "table": experiment.table, "plot": experiment.plot,
            "base_run": experiment.run}
    directory = store.sweep_dir(sweep)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / ".experiment.json.tmp"
    temporary.write_text(json.dumps(card, indent=2, default=str))
    os.replace(temporary, directory / "experiment.json")


def reconcile(store: ResultsStore, sweep: str, experiment: Experiment, results) -> dict[str, int]:
    """Make the store's trial rows agree with how Tune ended each trial: a trial Tune stopped
    early (ASHA) is 'pruned'; one that died without writing its row is 'failed'."""
    import pandas as pd

    trials_dir = store.sweep_dir(sweep) / "trials"
    rows = pd.read_parquet(trials_dir) if trials_dir.is_dir() and any(trials_dir.glob("*.parquet")) else pd.DataFrame()
    status_of = dict(zip(rows.get("trial_id", []), rows.get("status", [])))
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")  # Tune adds it to every result
        if trial_id is None or status_of.get(trial_id) not in (None, "running"):
            continue
        spec = experiment.run_spec({k: v for k, v in (result.config or {}).items()})
        recorder = TrialRecorder(store, sweep, trial_id, spec, experiment.name,
                                 experiment.setting_label(result.config or {}), start=False)
        if result.error is not None:
            recorder.finish("failed", error=f"{type(result.error).__name__}: {result.error}"[:4000])
        else:
            recorder.finish("pruned")
    rows = pd.read_parquet(trials_dir) if trials_dir.is_dir() else pd.DataFrame(columns=["status"])
    return rows["status"].value_counts().to_dict() if len(rows) else {}

