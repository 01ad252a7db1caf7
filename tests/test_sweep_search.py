"""The sweep's search algorithm in-process (no Ray started): what the Optuna study is told."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")


def test_an_asha_stopped_trial_is_pruned_in_the_study_and_named_by_its_trial_id():
    from ray import tune

    from dncml.platform.sweep import DNCML_TRIAL_ID, optuna_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = optuna_search()(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="best_val_recall@1", mode="max", seed=0)
    for trial_id, last_epoch in (("stopped_a", 1), ("full_b", 3)):
        assert "lr" in search.suggest(trial_id)
        for epoch in range(last_epoch + 1):
            search.on_trial_result(trial_id, {"best_val_recall@1": 0.1 * (epoch + 1), "training_iteration": epoch + 1})
        search.on_trial_complete(trial_id, {"best_val_recall@1": 0.1 * (last_epoch + 1), "epoch": last_epoch, "total_epochs": 4})
    trials = {t.user_attrs[DNCML_TRIAL_ID]: t for t in search._ot_study.trials}
    assert trials["stopped_a"].state.name == "PRUNED" and trials["stopped_a"].value == pytest.approx(0.2)  # its last report
    assert trials["full_b"].state.name == "COMPLETE" and trials["full_b"].value == pytest.approx(0.4)


def _experiment(tmp_path, grid: dict, **run) -> str:
    import yaml

    smoke = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "runs" / "glyphs_smoke.yaml"
    card = {
        "name": "datacheck",
        "base": str(smoke),
        "grid": grid,
        "run": {"glyph_classes": 64, "embedding_dim": 32, "steps_per_epoch": 2, **run},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.99},
    }
    path = tmp_path / "datacheck.yaml"
    path.write_text(yaml.safe_dump(card))
    return str(path)


def test_a_grid_point_that_fails_on_its_data_is_caught_before_ray_starts(tmp_path):
    """K = 32 learners need 64 training classes (2 per learner); 64 glyph classes leave fewer
    after validation: the grid point is named and Ray never starts. So is --mlflow without
    MLflow installed."""
    import ray

    from dncml.platform.errors import PlatformError
    from dncml.platform.sweep import run_sweep

    spec = _experiment(tmp_path, {"num_learners": [2, 32]})
    with pytest.raises(PlatformError, match=r"grid point num_learners=32: RunSpec field 'num_learners' \(K\) = 32: K must be <="):
        run_sweep(spec, storage=str(tmp_path / "store"))
    with pytest.raises(PlatformError, match="glyph_classes=100000"):
        run_sweep(_experiment(tmp_path, {"glyph_classes": [64, 100000]}), storage=str(tmp_path / "store"))
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


def test_mlflow_without_mlflow_installed_is_one_line_before_ray_starts(tmp_path, monkeypatch):
    import importlib.util

    import ray

    from dncml.platform.errors import PlatformError
    from dncml.platform.sweep import run_sweep

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "mlflow" else real(name, *args))
    with pytest.raises(PlatformError, match=r"--mlflow sqlite:///m.db: MLflow is not installed here; pip install 'dncml\[mlflow\]'"):
        run_sweep(_experiment(tmp_path, {"num_learners": [2]}), storage=str(tmp_path / "store"), mlflow_uri="sqlite:///m.db")
    assert not ray.is_initialized()
