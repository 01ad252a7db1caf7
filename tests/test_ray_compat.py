"""Every Ray internal that `dncml.platform.ray_compat` names still exists in the installed Ray
(imports, attributes and source only: no Ray runtime). A failure names the hook that a Ray
release renamed or removed; `ray_compat` is then the one module to adapt."""

from __future__ import annotations

import importlib
import inspect

import pytest

from dncml.platform import ray_compat


def _hook(condition: bool, hook: str, where: str) -> None:
    assert condition, (
        f"Ray internal hook {hook!r} is gone from {where} in Ray {_ray_version()} "
        f"(dncml.platform.ray_compat was checked against Ray {ray_compat.RAY_VERSION_CHECKED}): adapt ray_compat"
    )


def _ray_version() -> str:
    import ray

    return ray.__version__


def _source(obj) -> str:
    return inspect.getsource(obj)


@pytest.mark.parametrize(
    "method", [ray_compat.TRAINER_DEFAULT_CALLBACKS, ray_compat.TRAINER_RUN_CONTROLLER, ray_compat.TRAINER_SIGINT_HANDLER]
)
def test_the_trainer_methods_the_lean_trainer_overrides_exist(method):
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    _hook(callable(getattr(DataParallelTrainer, method, None)), method, "ray.train.v2.api.data_parallel_trainer.DataParallelTrainer")
    _hook(issubclass(TorchTrainer, DataParallelTrainer), "TorchTrainer(DataParallelTrainer)", "ray.train.torch")


def test_the_controller_run_still_calls_the_sigint_hook():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    run = getattr(DataParallelTrainer, ray_compat.TRAINER_RUN_CONTROLLER)
    _hook(ray_compat.TRAINER_SIGINT_HANDLER in _source(run), ray_compat.TRAINER_SIGINT_HANDLER, ray_compat.TRAINER_RUN_CONTROLLER)


@pytest.mark.parametrize(
    "module, name",
    [
        ("ray.train.v2._internal.callbacks.placement_group_callback", ray_compat.PLACEMENT_GROUP_CLEANER),
        ("ray.train.v2._internal.callbacks.datasets", ray_compat.DATASETS_CALLBACK),
    ],
)
def test_the_default_callbacks_the_lean_trainer_drops_exist_and_are_defaults(module, name):
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    found = getattr(importlib.import_module(module), name, None)
    _hook(isinstance(found, type) and found.__name__ == name, name, module)
    defaults = _source(getattr(DataParallelTrainer, ray_compat.TRAINER_DEFAULT_CALLBACKS))
    _hook(f"{name}(" in defaults, name, f"DataParallelTrainer.{ray_compat.TRAINER_DEFAULT_CALLBACKS}")


def test_the_default_callbacks_read_the_datasets_attribute():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    defaults = _source(getattr(DataParallelTrainer, ray_compat.TRAINER_DEFAULT_CALLBACKS))
    _hook("self.datasets" in defaults, "DataParallelTrainer.datasets", f"DataParallelTrainer.{ray_compat.TRAINER_DEFAULT_CALLBACKS}")


@pytest.mark.parametrize(
    "constant, value",
    [
        ("HEALTH_CHECK_INTERVAL_S_ENV_VAR", ray_compat.HEALTH_CHECK_INTERVAL),
        ("ENABLE_PREEMPTION_WATCHER_ENV_VAR", ray_compat.PREEMPTION_WATCHER),
        ("METRICS_ENABLED_ENV_VAR", ray_compat.TRAIN_METRICS),
    ],
)
def test_the_controller_variables_keep_their_names(constant, value):
    constants = importlib.import_module("ray.train.v2._internal.constants")
    _hook(getattr(constants, constant, None) == value, value, f"ray.train.v2._internal.constants.{constant}")


def test_ray_init_takes_the_node_address():
    import ray

    source = _source(inspect.unwrap(ray.init))
    _hook(f'"{ray_compat.NODE_IP_ADDRESS_ARGUMENT}"' in source, ray_compat.NODE_IP_ADDRESS_ARGUMENT, "ray.init")
    assert ray_compat.loopback_node("127.0.0.1") == {ray_compat.NODE_IP_ADDRESS_ARGUMENT: "127.0.0.1"}


def test_optuna_search_state():
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch()  # no space yet: nothing is asked of Optuna
    for name, kind in (("_ot_trials", dict), ("_completed_trials", set)):
        _hook(isinstance(getattr(search, name, None), kind), name, "ray.tune.search.optuna.OptunaSearch")
    _hook(hasattr(search, "_ot_study"), "_ot_study", "ray.tune.search.optuna.OptunaSearch")
    search._ot_trials["t1"] = marker = object()
    assert ray_compat.optuna_trial(search, "t1") is marker and ray_compat.optuna_trial(search, "t2") is None
    assert not ray_compat.optuna_trial_told(search, "t1")
    ray_compat.mark_optuna_trial_told(search, "t1")
    assert ray_compat.optuna_trial_told(search, "t1")
    assert ray_compat.optuna_study(search) is search._ot_study
    # Ray's own on_trial_complete skips a trial it finds told: what the PRUNED tell relies on
    complete = _source(OptunaSearch.on_trial_complete)
    _hook("_completed_trials" in complete, "_completed_trials", "OptunaSearch.on_trial_complete")


def test_mlflow_logger_state():
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    callback = MLflowLoggerCallback()
    _hook(hasattr(ray_compat.mlflow_logger_util(callback), "start_run"), "mlflow_util", "ray.air.integrations.mlflow.MLflowLoggerCallback")
    for method in ("start_run", "log_params", "log_metrics"):
        _hook(callable(getattr(callback.mlflow_util, method, None)), f"mlflow_util.{method}", "MLflowLoggerCallback")
    setup = _source(MLflowLoggerCallback.setup)
    _hook("self._trial_runs = {}" in setup, "_trial_runs", "MLflowLoggerCallback.setup")
    callback._trial_runs = {}
    assert ray_compat.mlflow_trial_runs(callback) is callback._trial_runs


def test_nothing_else_in_platform_touches_ray_internals():
    """The hooks live in ray_compat only: no other platform module imports a Ray `_internal` or
    `_private` module, reads one of the private attributes, or passes `_node_ip_address`."""
    import ast
    from pathlib import Path

    attributes = {
        ray_compat.TRAINER_DEFAULT_CALLBACKS,
        ray_compat.TRAINER_RUN_CONTROLLER,
        ray_compat.TRAINER_SIGINT_HANDLER,
        "_ot_trials",
        "_ot_study",
        "_completed_trials",
        "_trial_runs",
        "mlflow_util",
    }
    hooks = attributes | {ray_compat.NODE_IP_ADDRESS_ARGUMENT}
    offenders = []
    for path in sorted(Path(ray_compat.__file__).parent.rglob("*.py")):
        if path.name == "ray_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            used = [m for m in modules if m.startswith("ray") and any(p.startswith("_") for p in m.split("."))]
            used += [node.attr] if isinstance(node, ast.Attribute) and node.attr in attributes else []
            used += [node.arg] if isinstance(node, ast.keyword) and node.arg in hooks else []
            used += [node.value] if isinstance(node, ast.Constant) and node.value in hooks else []
            offenders += [f"{path.name}:{node.lineno}: {name}" for name in used]
    assert not offenders, offenders


def test_the_job_config_variable_is_what_the_job_supervisor_sets():
    constants = importlib.import_module("ray._private.runtime_env.constants")
    _hook(
        getattr(constants, "RAY_JOB_CONFIG_JSON_ENV_VAR", None) == ray_compat.JOB_CONFIG_VARIABLE,
        "RAY_JOB_CONFIG_JSON_ENV_VAR",
        "ray._private.runtime_env.constants",
    )
    supervisor = importlib.import_module("ray.dashboard.modules.job.job_supervisor")
    _hook("RAY_JOB_CONFIG_JSON_ENV_VAR" in _source(supervisor), "RAY_JOB_CONFIG_JSON_ENV_VAR", "the job supervisor's driver env")


def test_job_working_dir_only_inside_a_job_with_a_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ray_compat.JOB_CONFIG_VARIABLE, raising=False)
    assert ray_compat.job_working_dir() is None
    monkeypatch.setenv(ray_compat.JOB_CONFIG_VARIABLE, '{"runtime_env": {"py_modules": ["gcs://m.zip"]}, "metadata": {}}')
    assert ray_compat.job_working_dir() is None
    monkeypatch.setenv(ray_compat.JOB_CONFIG_VARIABLE, "not json")
    assert ray_compat.job_working_dir() is None
    monkeypatch.setenv(ray_compat.JOB_CONFIG_VARIABLE, '{"runtime_env": {"working_dir": "gcs://_ray_pkg_0a.zip"}}')
    assert ray_compat.job_working_dir() == tmp_path
