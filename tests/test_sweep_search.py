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
