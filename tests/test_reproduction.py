"""The reproduction path end to end: the smoke preset of every shipped experiment runs as a real
Ray Tune sweep into one Parquet store, and the tables, plots and notebooks are built from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dncml.experiments.loader import list_experiments, load_experiment

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_store(ray_session, tmp_path_factory):
    """Every experiment's smoke preset, swept once into a shared store."""
    from dncml.platform.sweep import run_sweep

    if not ray_session.is_initialized():
        ray_session.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    store = tmp_path_factory.mktemp("smoke-store")
    outcomes = {}
    for name in list_experiments():
        sweep, summary = run_sweep(name, preset="smoke", storage=str(store))
        outcomes[name] = (sweep, summary)
    return store, outcomes


def test_every_smoke_sweep_completes(smoke_store):
    store, outcomes = smoke_store
    for name, (sweep, summary) in outcomes.items():
        experiment = load_experiment(name, "smoke")
        assert summary.get("failed", 0) == 0, (name, summary)
        trials = pd.read_parquet(store / sweep / "trials")
        assert len(trials) == experiment.trial_count
        assert set(trials["status"]) <= {"completed", "pruned"}
        epochs = pd.read_parquet(store / sweep / "epochs")
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        # test_eval: selected: every completed trial's selected weights were tested, once
        completed = trials[trials["status"] == "completed"]
        assert len(completed) and completed["best_test_recall@1"].between(0, 1).all()
        assert epochs["selected_test_recall@1"].notna().sum() == len(completed)


def test_the_search_sweep_is_optunas_own_study_with_asha(smoke_store):
    """The hpo smoke sweep: Optuna samples every trial (seeded TPE), ASHA may stop some, and the
    study is Optuna's own, in the store: optuna.load_study (and optuna-dashboard) open it."""
    import optuna

    store, outcomes = smoke_store
    sweep, _ = outcomes["hpo"]
    experiment = load_experiment("hpo", "smoke")
    assert experiment.asha  # the suite's Optuna + ASHA sweep
    trials = pd.read_parquet(store / sweep / "trials")
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "pruned"}
    assert trials["spec_lr"].nunique() == 3  # three different learning rates sampled
    assert set(trials["spec_num_learners"]) <= {2, 4, 8}
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{store / sweep / 'optuna.db'}")
    assert len(study.trials) == 3
    assert sorted(round(t.params["lr"], 12) for t in study.trials) == sorted(round(v, 12) for v in trials["spec_lr"])
    # each Optuna trial names its store row; a trial ASHA stopped is PRUNED in the study too
    states = {t.user_attrs["dncml_trial_id"]: t.state.name for t in study.trials}
    assert states == {row.trial_id: "PRUNED" if row.status == "pruned" else "COMPLETE" for row in trials.itertuples()}


def test_table6_from_the_store(smoke_store):
    from dncml.analysis.store import load_experiment as load_results
    from dncml.analysis.tables import experiment_table, render_table

    store, _ = smoke_store
    table = experiment_table(load_results(store, "table6_grouping"))
    assert list(table.index) == ["none", "kmeans_nosplit", "random", "gt_labels", "kmeans"]
    markdown = render_table(store, "table6_grouping", fmt="md")
    for label in (
        "baseline (no division)",
        "random data partition",
        "ground-truth labels grouping",
        "K-means in embedding space (full method)",
    ):
        assert label in markdown
    assert "paper R@1" in markdown and "75.9" in markdown  # the paper's numbers beside ours


def test_cli_table_and_plot(smoke_store, tmp_path):
    store, _ = smoke_store
    cli = [sys.executable, "-m", "dncml.platform.cli"]
    for experiment in ("table3_losses", "t_sensitivity", "hierarchy", "hpo"):
        result = subprocess.run(
            [*cli, "table", str(store), "--experiment", experiment, "--format", "latex"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert "\\begin{tabular}" in result.stdout
    out = tmp_path / "fig1.png"
    result = subprocess.run(
        [*cli, "plot", str(store), "--experiment", "fig1_learners", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = subprocess.run(
        [*cli, "table", str(store), "--experiment", "table6_grouping", "--metric", "test_recall@77"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "test_recall@77" in result.stderr and "Traceback" not in result.stderr


def test_notebook_rebuilds_table6_from_the_store(smoke_store, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    store, _ = smoke_store
    notebook = nbformat.read(ROOT / "analysis" / "notebooks" / "table6_grouping.ipynb", as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert first.source.strip() == 'STORE = "results"'
    first.source = f"STORE = {str(store)!r}"
    notebook.cells.append(nbformat.v4.new_code_cell("print(sorted(table.index.tolist()))"))
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert "['gt_labels', 'kmeans', 'kmeans_nosplit', 'none', 'random']" in printed
