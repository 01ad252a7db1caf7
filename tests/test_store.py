"""The results store as the platform writes it: trial rows that tell the truth, names that cannot
leave the store, atomic writes, leases, and the Ray Train callback's check that all workers
trained on one assignment. No Ray runtime is started here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dncml.platform.store import Lease, ResultsStore, StoreError, TrialRecorder, new_id, safe_name
from dncml.trainers.files import publish_file
from dncml.trainers.spec import from_dict

ROOT = Path(__file__).resolve().parents[1]

SPEC = from_dict(dict(glyph_classes=48, warmup_epochs=0, epochs=2, finetune_epochs=1))


def epoch_row(epoch: int) -> dict:
    return {"epoch": epoch, "total_epochs": 3, "phase": "divide", "loss": 1.0, "val_recall@1": 0.5 + epoch / 10, "best_epoch": epoch}


@pytest.mark.parametrize("trial_id", ["run[1]-x", "plain-2"])
def test_completed_means_every_epoch_is_stored(tmp_path, trial_id):
    """A trial id with glob characters finds its epochs; a trial missing an epoch is not `completed`."""
    store = ResultsStore(tmp_path)
    full = TrialRecorder(store, "s", trial_id, SPEC)
    for epoch in range(3):
        full.epoch(epoch_row(epoch))
    assert full.finish("completed") == "completed"
    assert store.trial_row("s", trial_id)["epochs_done"] == 3
    assert store.finished_trial("s", trial_id, 3)

    short = TrialRecorder(store, "s", "short-1", SPEC)
    short.epoch(epoch_row(0))
    short.epoch(epoch_row(2))
    assert short.finish("completed") == "failed"
    row = store.trial_row("s", "short-1")
    assert row["status"] == "failed" and "missing [1]" in row["error"]
    assert store.finished_trial("s", "short-1", 3) is None


def test_a_trial_row_takes_the_selected_weights_test_metrics(tmp_path):
    """`test_eval: selected`: the selected epoch (0) has no test metrics of its own; the last
    row's `selected_test_*` are the trial's best_test_*, and final_test_* stays empty."""
    store = ResultsStore(tmp_path)
    recorder = TrialRecorder(store, "s", "sel-1", SPEC, metric_names=["val_recall@1", "test_recall@1"])
    for epoch in range(3):
        recorder.epoch({**epoch_row(epoch), "best_epoch": 0, "val_recall@1": 0.9 - epoch / 10})
    store.write_epoch("s", "sel-1", {**epoch_row(2), "best_epoch": 0, "selected_test_recall@1": 0.42}, recorder.metric_names)
    assert recorder.finish("completed") == "completed"
    row = store.trial_row("s", "sel-1")
    assert row["best_epoch"] == 0 and row["best_val_recall@1"] == pytest.approx(0.9)
    assert row["best_test_recall@1"] == pytest.approx(0.42)
    assert row["final_test_recall@1"] is None
    # one schema for the sweep: every epoch file has the selected_ column (null but on the last)
    epochs = pd.read_parquet(tmp_path / "s" / "epochs")
    assert epochs.sort_values("epoch")["selected_test_recall@1"].isna().tolist() == [True, True, False]


def test_a_trial_row_records_the_recipe_and_the_steps(tmp_path):
    store = ResultsStore(tmp_path)
    spec = SPEC.replace(recipe="authors_code", negatives="distance_weighted")
    recorder = TrialRecorder(store, "s", "recipe-1", spec)
    for epoch in range(3):
        recorder.epoch({**epoch_row(epoch), "steps": 10 + epoch})
    recorder.finish("completed")
    row = store.trial_row("s", "recipe-1")
    assert row["spec_recipe"] == "authors_code" and row["spec_learner_schedule"] is None  # null: the recipe's
    settings = json.loads(row["recipe_settings"])
    assert settings["learner_schedule"] == "round_robin" and settings["negatives"] == "distance_weighted"  # given wins
    assert settings["full_embedding_from"] == 1  # ceil(8/19 x 2)
    assert row["train_steps"] == 10 + 11 + 12


def test_selected_test_metrics_of_every_way_a_run_tests():
    """The one reading of a run's reports that the trial row and `dncml train --local` share."""
    from dncml.platform.store import selected_test_metrics

    every_eval = [{**epoch_row(e), "best_epoch": 1, "test_recall@1": 0.1 * (e + 1)} for e in range(3)]
    assert selected_test_metrics(every_eval) == {"test_recall@1": pytest.approx(0.2)}  # the selected epoch's own
    selected = [{**epoch_row(e), "best_epoch": 0} for e in range(3)]
    selected[-1].update({"test_recall@1": 0.7, "selected_test_recall@1": 0.4, "selected_test_map@r": 0.3})
    assert selected_test_metrics(selected) == {"test_recall@1": 0.4, "test_map@r": 0.3}  # not the last epoch's own
    at_the_end = [{**epoch_row(e), "best_epoch": 2} for e in range(3)]
    at_the_end[-1].update({"test_recall@1": 0.7, "selected_test_recall@1": 0.7})
    assert selected_test_metrics(at_the_end) == {"test_recall@1": 0.7}
    assert selected_test_metrics([{**epoch_row(0), "best_epoch": 0}]) == {}  # pruned before its end: no test ran
    assert selected_test_metrics([]) == {}


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "x..y", "", "-flag", "a" * 200])
def test_names_cannot_leave_the_store(name):
    with pytest.raises(StoreError, match="names files in the results store"):
        safe_name(name, "sweep")


def test_ids_are_unique_within_one_second():
    ids = {new_id("same-spec") for _ in range(200)}
    assert len(ids) == 200


def test_publish_file_leaves_no_temporary_file_on_error(tmp_path):
    target = tmp_path / "row.parquet"
    target.write_text("old")

    def failing(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_file(target, failing)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["row.parquet"]


def test_a_live_lease_is_refused_and_a_dead_one_taken_over(tmp_path):
    path = tmp_path / ".leases" / "sweep.json"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": "then"}))
        with pytest.raises(StoreError, match=f"still running \\(pid {holder.pid}"):
            Lease(path, "sweep x").acquire()
    finally:
        holder.kill()
        holder.wait()
    with Lease(path, "sweep x"):  # the holder is gone: its lease is stale
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    # another host's lease counts while its heartbeat is fresh, and not once it is stale
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(StoreError, match="on elsewhere"):
        Lease(path, "sweep x").acquire()
    os.utime(path, (0, 0))
    with Lease(path, "sweep x"):
        pass


def test_store_callback_stops_a_run_whose_workers_disagree(tmp_path):
    from dncml.platform.controller import StoreCallback, WorkersDisagree

    callback = StoreCallback(str(tmp_path), "train", "t-1", ["val_recall@1"])
    agree = [{**epoch_row(0), "assignment_version": 0, "assignment_digest": 7, "node_id": n} for n in ("a", "b")]
    callback.after_report(None, agree, None)
    disagree = [{**epoch_row(1), "assignment_version": 1, "assignment_digest": d, "node_id": "a"} for d in (7, 8)]
    with pytest.raises(WorkersDisagree, match="different assignments"):
        callback.after_report(None, disagree, None)
    rows = pd.read_parquet(tmp_path / "train" / "epochs").sort_values("epoch")
    assert rows["workers_agree"].tolist() == [True, False]  # recorded, then stopped


def test_record_missing_epochs_writes_only_what_the_store_lacks(tmp_path):
    """A resumed Ray run's chief re-records, from its checkpoint's history, the epochs a crash
    left out of the store (checkpoint saved, row not written), and nothing it already holds."""
    from dncml.platform.store import ResultsStore

    store = ResultsStore(str(tmp_path))
    store.write_epoch("s", "t", {"epoch": 0, "loss": 1.0}, ["val_recall@1"])
    history = [{"epoch": 0, "loss": 9.0}, {"epoch": 1, "loss": 0.5}]
    assert store.record_missing_epochs("s", "t", history, ["val_recall@1"]) == [1]
    rows = store.epoch_rows("s", "t")
    assert [(r["epoch"], r["loss"]) for r in rows] == [(0, 1.0), (1, 0.5)]  # epoch 0 kept as recorded
    assert store.record_missing_epochs("s", "t", history, ["val_recall@1"]) == []


def test_status_and_best_so_far_name_the_trial_rows_best_epoch_on_a_tie(tmp_path):
    """val R@1 ties at epochs 1 and 2; MAP@R (the trainer's tie-breaker) is higher at epoch 1, so
    the trainer selects epoch 1 and every later row says so (`best_epoch`). The readers take that
    choice, not their own: re-deriving "the later one on ties" named epoch 2."""
    from dncml.analysis.schema import CARD_FILE, ExperimentCard
    from dncml.analysis.status import sweep_status
    from dncml.analysis.store import best_so_far, load_experiment

    store = ResultsStore(tmp_path)
    store.write_card("s-20260101-000000", ExperimentCard(experiment="tie", preset="quick", rows=["seed"]))
    assert (tmp_path / "s-20260101-000000" / CARD_FILE).is_file()
    names = ["val_recall@1", "val_map@r", "test_recall@1"]
    reports = [(0.5, 0.20, 0), (0.7, 0.40, 1), (0.7, 0.30, 1)]  # (val R@1, val MAP@R, best_epoch so far)
    for trial_id in ("done-1", "live-1"):
        recorder = TrialRecorder(store, "s-20260101-000000", trial_id, SPEC, metric_names=names)
        for epoch, (recall, map_r, best) in enumerate(reports):
            recorder.epoch(
                {**epoch_row(epoch), "val_recall@1": recall, "val_map@r": map_r, "test_recall@1": 0.1 * epoch, "best_epoch": best}
            )
        if trial_id == "done-1":
            assert recorder.finish("completed") == "completed"
    row = store.trial_row("s-20260101-000000", "done-1")
    assert row["best_epoch"] == 1 and row["best_val_map@r"] == pytest.approx(0.40)

    data = load_experiment(tmp_path, "tie", include_running=True)
    shown = best_so_far(data.trials, data.epochs).set_index("trial_id")
    assert shown.loc["live-1", "status"] == "running"
    assert shown.loc["live-1", "best_epoch"] == row["best_epoch"] == shown.loc["done-1", "best_epoch"]
    assert shown.loc["live-1", "best_val_map@r"] == pytest.approx(0.40)
    assert shown.loc["live-1", "best_test_recall@1"] == pytest.approx(0.1)  # epoch 1's, not epoch 2's 0.2

    _, table = sweep_status(str(tmp_path / "s-20260101-000000"))
    table = table.set_index("trial")
    assert table.loc["done-1", "at epoch"] == table.loc["live-1", "at epoch"] == row["best_epoch"] + 1  # shown 1-based
    assert table.loc["live-1", "best val_recall@1"] == pytest.approx(0.7)


def test_publishing_dir_publishes_whole_keeps_a_concurrent_winner_and_cleans_up(tmp_path):
    from dncml.trainers.files import publishing_dir

    target = tmp_path / "cache" / "key"
    with publishing_dir(target) as staging:
        (staging / "a.npy").write_text("first")
        assert not target.exists()  # nothing under the name until the block ends
    assert (target / "a.npy").read_text() == "first" and oct(target.stat().st_mode & 0o777) != oct(0o700)
    with publishing_dir(target) as staging:  # another writer got there first: its copy stands
        (staging / "a.npy").write_text("second")
    assert (target / "a.npy").read_text() == "first"
    with pytest.raises(RuntimeError), publishing_dir(tmp_path / "cache" / "other") as staging:
        raise RuntimeError("render failed")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["key"]  # no temporary left
    with publishing_dir(target, replace=True) as staging:  # a pointer that moves (checkpoints/best)
        (staging / "b.npy").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.npy"]


def test_a_store_inside_a_ray_jobs_working_directory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """`ray job submit --working-dir D -- dncml sweep ...` runs the driver in Ray's temporary copy
    of D, deleted with the job: a relative --storage (the default `results`) would put every row
    there. It is refused in one line, before Ray starts; an absolute path outside it or a bucket
    is fine."""
    from dncml.platform import ray_compat

    job_copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0a"
    job_copy.mkdir(parents=True)
    monkeypatch.chdir(job_copy)
    monkeypatch.setenv(ray_compat.JOB_CONFIG_VARIABLE, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0a.zip"}}))
    for inside in ("results", str(job_copy / "deep" / "results")):
        with pytest.raises(StoreError, match="working directory.*--storage"):
            ResultsStore(inside).check()
    assert not (job_copy / "results").exists() and not (job_copy / "deep").exists()
    ResultsStore(str(tmp_path / "shared" / "results")).check()  # outside the copy: accepted
    result = subprocess.run(
        [sys.executable, "-m", "dncml.platform.cli", "sweep", str(ROOT / "experiments" / "table6_grouping.yaml"), "--preset", "smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, ray_compat.JOB_CONFIG_VARIABLE: json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}})},
        cwd=job_copy,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and "working directory" in result.stderr
    assert not (job_copy / "results").exists()


def test_a_merge_that_fails_does_not_end_the_sweep(tmp_path, monkeypatch, caplog):
    """Merging ended trials into segments is a speed-up: when the store refuses it (a bucket's
    hiccup), the driver's callback logs one line and the sweep goes on, its files as they were."""
    from dncml.platform.sweep import StoreCompaction

    store = ResultsStore(str(tmp_path / "store"))

    def refuse(self, sweep, final=False):
        raise OSError("When listing objects under key 'bucket/s/trials': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(ResultsStore, "compact_sweep", refuse)
    callback = StoreCompaction(store, "s")
    with caplog.at_level("WARNING"):
        callback.on_trial_complete(0, [], None)
        callback.on_trial_error(0, [], None)
    assert sum("could not merge ended trials" in r.getMessage() for r in caplog.records) == 2


def test_the_controller_loads_the_store_callback_without_the_trainer():
    """Ray Train's controller (a new process every trial) unpickles `StoreCallback`: its module
    must not pull in the training stack that only the workers need."""
    import subprocess
    import sys

    heavy = ("torch", "pytorch_metric_learning", "scipy.stats", "dncml.trainers.divide_and_conquer")
    code = f"import sys, dncml.platform.controller; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert loaded.strip() == "[]"
