"""The Python API in-process, no Ray started: what a sweep tells Optuna, the checks it runs before
Ray starts, what it returns, and progress from a notebook."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")


def test_an_asha_stopped_trial_is_pruned_in_the_study_and_named_by_its_trial_id():
    from ray import tune

    from dncml.platform.ray_compat import optuna_study
    from dncml.platform.sweep import DNCML_TRIAL_ID, optuna_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = optuna_search()(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="best_val_recall@1", mode="max", seed=0)
    for trial_id, last_epoch in (("stopped_a", 1), ("full_b", 3)):
        assert "lr" in search.suggest(trial_id)
        for epoch in range(last_epoch + 1):
            search.on_trial_result(trial_id, {"best_val_recall@1": 0.1 * (epoch + 1), "training_iteration": epoch + 1})
        search.on_trial_complete(trial_id, {"best_val_recall@1": 0.1 * (last_epoch + 1), "epoch": last_epoch, "total_epochs": 4})
    trials = {t.user_attrs[DNCML_TRIAL_ID]: t for t in optuna_study(search).trials}
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


def test_run_sweeps_result_reads_trials_epochs_best_trial_and_its_checkpoint(tmp_path):
    """`run_sweep` returns a SweepResult (unpacking as `(sweep, summary)`, as before) whose
    DataFrames and best trial come from the results store, as written by the platform's writer."""
    import json

    from dncml.platform.store import ResultsStore
    from dncml.platform.sweep import SweepResult

    store, sweep = ResultsStore(tmp_path), "grid-smoke-20260101-000000"
    (tmp_path / sweep).mkdir()
    card = {"experiment": "grid", "preset": "smoke", "sweep": sweep, "rows": ["num_learners"], "metric": "val_recall@1", "mode": "max"}
    (tmp_path / sweep / "experiment.json").write_text(json.dumps(card))
    for k, recall in ((2, 0.5), (4, 0.7)):
        checkpoint = tmp_path / "ckpt" / f"k{k}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.pt").write_bytes(b"weights")
        store.write_epoch(sweep, f"k{k}", {"epoch": 0, "val_recall@1": recall, "checkpoint": str(checkpoint)}, ["val_recall@1"])
        row = {"trial_id": f"k{k}", "sweep": sweep, "experiment": "grid", "status": "completed", "spec_num_learners": k}
        store.write_trial(sweep, {**row, "best_epoch": 0, "best_val_recall@1": recall}, ["val_recall@1"])
    result = SweepResult(sweep, {"completed": 2}, tmp_path, "grid", "val_recall@1", "max")
    name, summary = result
    assert (name, summary) == (sweep, {"completed": 2}) and result[0] == sweep
    assert len(result.trials) == 2 and len(result.epochs) == 2
    assert result.best_trial["trial_id"] == "k4" and result.best_checkpoint == str(tmp_path / "ckpt" / "k4")


def test_train_local_from_python_shows_a_progress_bar(tmp_path, monkeypatch, capsys):
    """Called from Python (a notebook) without the command line's logging set-up, a run shows a
    tqdm.auto bar of its epochs; the CLI (set up) prints its lines instead."""
    from dncml.platform import console
    from dncml.platform.local import train_local
    from dncml.trainers import spec as runspec

    monkeypatch.setattr(console.log, "handlers", [])
    smoke = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "runs" / "glyphs_smoke.yaml"
    tiny = {"glyph_classes": 48, "image_size": 16, "embedding_dim": 16, "steps_per_epoch": 2, "kmeans_iterations": 5, "epochs": 1}
    train_local(runspec.load(smoke, tiny), run_dir=tmp_path / "run", storage=str(tmp_path / "store"))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("glyphs_smoke: 100%") and "3/3" in bar and "loss=" in bar and "val_recall@1=" in bar
    # every division round records what the grouping did (glyphs have groups: their scripts)
    import json

    import pandas as pd

    rounds = pd.read_parquet(tmp_path / "store" / "train" / "epochs").dropna(subset=["cluster_sizes"])
    assert len(rounds) and rounds["class_purity"].between(0, 1).all() and rounds["group_purity"].between(0, 1).all()
    assert all(len(json.loads(c)) == len(json.loads(s)) for c, s in zip(rounds["cluster_classes"], rounds["cluster_sizes"]))


def test_a_divisions_evidence_by_hand():
    import numpy as np

    from dncml.trainers.grouping import Assignment

    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])  # class 0 split 3:1, classes 1 and 2 whole
    groups = np.array([5, 5, 5, 5, 5, 5, 7, 7])
    clusters = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    evidence = Assignment(version=0, clusters=clusters, num_clusters=2).evidence(labels, groups)
    assert evidence["cluster_classes"] == "[1, 3]"
    assert evidence["class_purity"] == pytest.approx((3 / 4 + 1 + 1) / 3)
    assert evidence["group_purity"] == pytest.approx((3 + 3) / 8)  # cluster 1: three of group 5, two of 7
    assert np.isnan(Assignment(version=0, clusters=clusters, num_clusters=2).evidence(labels, np.full(8, -1))["group_purity"])


def test_retrievals_grid_marks_right_and_wrong_neighbours(tmp_path):
    """Each query's k nearest neighbours framed green (its class) or red (another): here class
    1's images lie next to class 0's, so its neighbours are half wrong."""
    import numpy as np
    from PIL import Image

    from dncml.trainers.data.base import ImageSplit
    from dncml.trainers.data.preview import RIGHT, WRONG, save_retrievals

    labels = np.repeat([0, 1, 2], 4)
    vectors = np.array([[0.0, i * 0.01] for i in range(4)] + [[0.005, i * 0.01] for i in range(4)] + [[5.0, i] for i in range(4)])
    split = ImageSplit("test", labels, images=np.full((12, 16, 16), 200, dtype=np.uint8))
    out, right = save_retrievals(split, vectors, tmp_path / "r.png", queries=3, k=3)
    rows = np.asarray(Image.open(out).convert("RGB"))
    assert rows.shape[0] > 3 * 16 and 0 < right < 1
    colours = {tuple(c) for c in rows.reshape(-1, 3)}
    assert RIGHT in colours and WRONG in colours


def test_glyph_classes_are_named_by_their_glyph_and_code_point():
    from dncml.trainers import spec as runspec
    from dncml.trainers.data.loading import load_dataset

    smoke = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "runs" / "glyphs_smoke.yaml"
    bundle = load_dataset(runspec.load(smoke, {"glyph_classes": 48, "image_size": 16}), progress=False)
    label = int(bundle.train.labels[0])
    name = bundle.class_names[label]
    glyph, code = name.split(" ")
    assert code == f"U+{ord(glyph):04X}"  # `datasets show` labels rows with it, not "class 0"


def test_a_failed_trial_prints_the_reason_its_row_records(tmp_path):
    from types import SimpleNamespace

    from dncml.experiments.loader import load_experiment
    from dncml.platform.store import ResultsStore, TrialRecorder
    from dncml.platform.sweep import ProgressPrinter

    experiment = load_experiment("table6_grouping", "smoke")
    store = ResultsStore(tmp_path)
    TrialRecorder(store, "s", "t1", experiment.run_spec(), experiment.name).fail(ValueError("bad.pt: not weights"))
    printer = ProgressPrinter(experiment, 1, 1, store=store, sweep="s")
    trial = SimpleNamespace(trial_id="t1", get_error=lambda: None, config={"grouping": "kmeans", "seed": 0})
    assert printer.reason(trial) == "ValueError: bad.pt: not weights"  # Tune's own error is not there yet


def test_a_sweep_loads_its_experiment_once(tmp_path, monkeypatch):
    """`dncml sweep` reads and validates the spec once, before Ray is imported, and the sweep's
    set-up (the data checks, and everything after) goes on with that one object."""
    import dncml.experiments.loader as loader
    import dncml.platform.sweep as sweep_module
    from dncml.platform import cli

    loads, checked = [], []
    real = loader.load_experiment

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    class StopBeforeRay(Exception):
        pass

    def stop(*args, **kwargs):
        raise StopBeforeRay

    monkeypatch.setattr(loader, "load_experiment", counting)
    monkeypatch.setattr(sweep_module, "load_experiment", counting)
    monkeypatch.setattr(sweep_module, "check_data_everywhere", lambda experiment, workers: checked.append(experiment))
    monkeypatch.setattr(sweep_module, "connect", stop)
    spec = _experiment(tmp_path, {"num_learners": [2, 4]})
    args = cli.build_parser().parse_args(["sweep", spec, "--storage", str(tmp_path / "store")])
    with pytest.raises(StopBeforeRay):
        cli.cmd_sweep(args)
    assert loads == [spec]
    assert len(checked) == 1 and checked[0].path == __import__("pathlib").Path(spec) and checked[0].grid == {"num_learners": [2, 4]}
    # the Python API given a path loads it itself, once
    loads.clear()
    with pytest.raises(StopBeforeRay):
        sweep_module.run_sweep(spec, storage=str(tmp_path / "store"))
    assert loads == [spec]
