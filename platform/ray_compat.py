"""The parts of Ray that are not its public API and that dncml relies on, each behind one name.

Checked against Ray 2.60.0 (`RAY_VERSION_CHECKED`). A Ray release may rename or drop any of
these without notice; `tests/test_ray_compat.py` checks every one against the installed Ray
(imports and attributes only, no Ray runtime) and fails naming the hook that moved. Nothing
else in `platform/` touches a `_`-prefixed Ray attribute, a `ray.*._internal` name or an
undocumented `ray.init` argument.

The hooks:

* Ray Train V2's `DataParallelTrainer` (TorchTrainer's base): `_create_default_callbacks`,
  `_initialize_and_run_controller` and `_register_sigint_handler`, which `trainer_subclass`
  overrides, and the class names of two of its default callbacks (`PLACEMENT_GROUP_CLEANER`,
  `DATASETS_CALLBACK`, in `ray.train.v2._internal.callbacks`);
* Ray Train's controller variables (`ray.train.v2._internal.constants`): `HEALTH_CHECK_INTERVAL`,
  `PREEMPTION_WATCHER`, `TRAIN_METRICS`;
* `ray.init(_node_ip_address=...)` (`loopback_node`);
* Ray Tune's `OptunaSearch` state: `_ot_trials`, `_ot_study`, `_completed_trials`;
* Ray's `MLflowLoggerCallback` state: `_trial_runs` and `mlflow_util`;
* the variable Ray's job supervisor hands a submitted job's driver (`JOB_CONFIG_VARIABLE`, in
  `ray._private.runtime_env.constants`), which `job_working_dir` reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

RAY_VERSION_CHECKED = "2.60.0"

# Ray Train V2 DataParallelTrainer methods that `trainer_subclass` overrides.
TRAINER_DEFAULT_CALLBACKS = "_create_default_callbacks"
TRAINER_RUN_CONTROLLER = "_initialize_and_run_controller"
TRAINER_SIGINT_HANDLER = "_register_sigint_handler"

# Class names of Ray Train V2's default callbacks (ray.train.v2._internal.callbacks.*).
PLACEMENT_GROUP_CLEANER = "PlacementGroupCleanerCallback"
DATASETS_CALLBACK = "DatasetsCallback"

# Ray Train V2's controller variables (ray.train.v2._internal.constants), read by the controller,
# where a value the user set wins.
HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
TRAIN_METRICS = "RAY_TRAIN_METRICS_ENABLED"

# `ray.init`'s undocumented argument that sets the node's own address.
NODE_IP_ADDRESS_ARGUMENT = "_node_ip_address"


def trainer_subclass(
    base: type,
    keep_callback: Callable[[object, object], bool],
    controller_env: Callable[[], dict[str, str]],
) -> type:
    """`base` (a Ray Train V2 trainer) whose default callbacks are only those
    `keep_callback(trainer, callback)` keeps, whose controller starts with the variables of
    `controller_env()` that this process does not set already (set for that run only: Ray Train
    hands the controller the RAY_TRAIN_* variables of this process), and without Ray Train's own
    Ctrl-C handler (which aborts the controller and exits the driver with SystemExit; without it
    Ctrl-C and SIGTERM are a KeyboardInterrupt for the caller)."""
    import os

    class Trainer(base):
        def _create_default_callbacks(self):
            return [callback for callback in super()._create_default_callbacks() if keep_callback(self, callback)]

        def _register_sigint_handler(self, controller):
            return None

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            added = {name: value for name, value in controller_env().items() if name not in os.environ}
            os.environ.update(added)
            try:
                return super()._initialize_and_run_controller(**controller_init_kwargs)
            finally:
                for name in added:
                    os.environ.pop(name, None)

    Trainer.__name__ = Trainer.__qualname__ = base.__name__
    return Trainer


def default_callbacks(trainer) -> list:
    """The callbacks a Ray Train V2 trainer runs with besides the user's (after any filter of
    `trainer_subclass`)."""
    return getattr(trainer, TRAINER_DEFAULT_CALLBACKS)()


def callback_name(callback) -> str:
    """A Ray Train callback's class name (compared with `PLACEMENT_GROUP_CLEANER`, ...)."""
    return type(callback).__name__


def loopback_node(address: str = "127.0.0.1") -> dict:
    """`ray.init` arguments that make the new local node's own address `address`."""
    return {NODE_IP_ADDRESS_ARGUMENT: address}


# The JSON job config (runtime env, metadata) Ray's job supervisor gives a submitted driver.
JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_working_dir() -> Path | None:
    """The directory a `ray job submit --working-dir` driver runs in: Ray's temporary copy of the
    working directory (under the node's `runtime_resources/working_dir_files/`), which Ray
    deletes with the job's runtime env. None outside such a job."""
    try:
        runtime_env = json.loads(os.environ.get(JOB_CONFIG_VARIABLE) or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return Path.cwd() if isinstance(runtime_env, dict) and runtime_env.get("working_dir") else None


# ------------------------------------------------------------------ Ray Tune's OptunaSearch
def optuna_trial(search, trial_id: str):
    """The Optuna trial that Ray's OptunaSearch asked for Tune trial `trial_id`, or None."""
    return search._ot_trials.get(trial_id)


def optuna_study(search):
    """The Optuna study that Ray's OptunaSearch samples from."""
    return search._ot_study


def optuna_trial_told(search, trial_id: str) -> bool:
    """Whether Ray's OptunaSearch has already told the study how `trial_id` ended."""
    return trial_id in search._completed_trials


def mark_optuna_trial_told(search, trial_id: str) -> None:
    """Record in Ray's OptunaSearch that the study was told how `trial_id` ended (so that Ray's
    own `on_trial_complete` does not tell it again)."""
    search._completed_trials.add(trial_id)


# ------------------------------------------------------------- Ray's MLflowLoggerCallback
def mlflow_trial_runs(callback) -> dict:
    """Ray's MLflowLoggerCallback's Tune trial -> MLflow run id (filled as trials start)."""
    return callback._trial_runs


def mlflow_logger_util(callback):
    """Ray's MLflowLoggerCallback's MLflow helper (`start_run`, `log_params`, `log_metrics`)."""
    return callback.mlflow_util
