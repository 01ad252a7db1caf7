"""Experiment tracking beside the results store: MLflow (through Ray Tune's own MLflow logger),
TensorBoard event files, and the Optuna study of a search kept where `optuna.load_study` and
optuna-dashboard find it."""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback

from dncml.analysis.schema import COMPLETED, spec_column
from dncml.experiments.loader import Experiment, sample_is_valid

from . import ray_compat
from .store import tag_name


class MLflowCallback(MLflowLoggerCallback):
    """Ray Tune's MLflow logger, with a run per trial named after its setting, the trial's whole
    RunSpec as its parameters (Tune alone would log only the swept fields), and every epoch's
    metrics at step = epoch (`val_recall@1` as `val_recall_at_1`: MLflow refuses '@')."""

    def __init__(self, tracking_uri: str, experiment: Experiment, sweep: str):
        super().__init__(
            tracking_uri=tracking_uri, experiment_name=experiment.name, tags={"dncml.sweep": sweep, "dncml.preset": experiment.preset}
        )
        self.experiment = experiment

    def log_trial_start(self, trial) -> None:
        runs, mlflow = ray_compat.mlflow_trial_runs(self), ray_compat.mlflow_logger_util(self)
        if trial not in runs:
            tags = {
                **self.tags,
                "trial_name": str(trial),
                "dncml.trial_id": trial.trial_id,
                "dncml.setting": self.experiment.setting_label(trial.config),
            }
            run = mlflow.start_run(tags=tags, run_name=f"{tags['dncml.setting']} {trial.trial_id}")
            runs[trial] = run.info.run_id
        # An invalid sample (the trial records why and fails) is logged with the base spec.
        valid = sample_is_valid(self.experiment, trial.config) is None
        spec = self.experiment.run_spec(trial.config) if valid else self.experiment.run_spec()
        mlflow.log_params(run_id=runs[trial], params_to_log=spec.to_dict())

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        numbers = {tag_name(k): v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run_id = ray_compat.mlflow_trial_runs(self)[trial]
        ray_compat.mlflow_logger_util(self).log_metrics(run_id=run_id, metrics_to_log=numbers, step=int(result.get("epoch", iteration)))


def optuna_storage(url: str):
    """Optuna's own RDB storage at `url` (`ResultsStore.study_url`: SQLite in the sweep's
    folder, on the driver's disk, or the user's --optuna-storage)."""
    import optuna

    return optuna.storages.RDBStorage(url)


def resume_study(url: str, study_name: str, rows: list[dict], metric: str) -> None:
    """Settle a resumed search's study, the one access to it (at `url`, `ResultsStore.study_url`):
    a trial the interrupted sweep left RUNNING or WAITING in it is told what the store says (a
    completed trial row with the same parameters: COMPLETE with its `metric`; anything else:
    FAIL, and the resumed sweep evaluates its point again)."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return  # the sweep never asked its searcher for a trial
    completed = [row for row in rows if row.get("status") == COMPLETED and row.get(metric) is not None]
    told = set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        match = next(
            (
                row
                for row in completed
                if row["trial_id"] not in told and all(row.get(spec_column(name)) == value for name, value in trial.params.items())
            ),
            None,
        )
        if match is not None and trial.state == TrialState.RUNNING and trial.params:
            told.add(match["trial_id"])
            storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, values=[float(match[metric])])
        else:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
