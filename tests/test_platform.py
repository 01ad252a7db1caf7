"""The Ray platform, on real Ray: Train workers, the clustering actor, sweeps, faults, resume,
a multi-node cluster made with `ray start`, and bad input. Every run is smoke-sized."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dncml.trainers import spec as runspec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "runs" / "glyphs_smoke.yaml"
CLI = [sys.executable, "-m", "dncml.platform.cli"]

pytestmark = pytest.mark.slow


def smoke_spec(**overrides) -> runspec.RunSpec:
    return runspec.load(SMOKE, {"glyph_classes": 64, "embedding_dim": 32, "steps_per_epoch": 4, "kmeans_iterations": 10, **overrides})


def write_experiment(tmp_path: Path, name: str, grid: dict, run: dict | None = None, **extra) -> Path:
    card = {
        "name": name,
        "base": str(SMOKE),
        "grid": grid,
        "rows": [k for k in grid if k != "seed"] or ["seed"],
        "run": {
            "glyph_classes": 64,
            "embedding_dim": 32,
            "steps_per_epoch": 4,
            "kmeans_iterations": 10,
            "warmup_epochs": 0,
            "epochs": 1,
            "finetune_epochs": 1,
            **(run or {}),
        },
        "resources": {"num_workers": 1, "cpus_per_worker": 0.99},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def read_store(store: Path, sweep: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(store / sweep / "trials"), pd.read_parquet(store / sweep / "epochs")


def user_experiment_folder(tmp_path: Path, card: dict, name: str) -> Path:
    """A user's own experiment folder, shipped as a job's working directory: the smoke run in
    runs/, and `card` as `<name>.yaml` naming it by a relative path, two seeds of one 1.5-CPU
    worker each (two such trials cannot share a 2-CPU node)."""
    user_dir = tmp_path / "my_experiments"
    (user_dir / "runs").mkdir(parents=True)
    (user_dir / "runs" / "smoke.yaml").write_text(SMOKE.read_text())
    card.update(name=name, base="runs/smoke.yaml", grid={"seed": [0, 1]}, resources={"num_workers": 1, "cpus_per_worker": 1.5})
    (user_dir / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return user_dir


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def in_background(function, *args, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # surfaced by the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def state_address() -> str:
    """This session's GCS, named explicitly: with address None the state API may pick another
    Ray instance on the machine (or a stale one recorded by `ray start`)."""
    import ray

    return ray.get_runtime_context().gcs_address


def epoch_files(store: Path, sweep: str = "train") -> list[Path]:
    directory = store / sweep / "epochs"
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


# ------------------------------------------------------------------------------- Ray Train
def test_a_local_ray_listens_on_the_loopback_only(ray_local):
    """What `dncml` starts (`local_ray_options`, as this session's Ray): the GCS, the raylet, the
    workers, an actor, the agents and the dashboard listen on 127.0.0.1, none beyond it."""
    import psutil

    @ray_local.remote
    class Probe:
        def pid(self):
            return os.getpid()

    probe = Probe.remote()
    ray_local.get(probe.pid.remote())  # a worker process and an actor are up
    listening = set()
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            listening |= {(c.laddr.ip, c.laddr.port, process.name()) for c in process.net_connections("inet") if c.status == "LISTEN"}
        except psutil.Error:
            continue
    ray_local.kill(probe)
    assert len(listening) >= 4, listening  # GCS, raylet, dashboard, agents at least
    assert {ip for ip, _, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, sorted(listening)


def test_lean_trainer_leaves_out_the_dataset_manager_and_on_one_node_the_cleaner(ray_local, monkeypatch):
    """Ray Train's defaults minus the callbacks that start a DatasetManager (no Ray Datasets
    here) and, on a one-node Ray, the placement-group cleaner and the preemption watcher;
    DNCML_LEAN_TRAIN=0 keeps them."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from dncml.platform.ray_compat import default_callbacks
    from dncml.platform.train import lean_controller_env, lean_trainer

    def callbacks():
        trainer = lean_trainer(TorchTrainer)(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
        return {type(callback).__name__ for callback in default_callbacks(trainer)}

    assert len([n for n in ray_local.nodes() if n["Alive"]]) == 1
    lean = callbacks()
    assert "BackendSetupCallback" in lean and not lean & {"DatasetsCallback", "PlacementGroupCleanerCallback"}
    assert lean_controller_env() == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    monkeypatch.setenv("DNCML_LEAN_TRAIN", "0")
    assert callbacks() - lean == {"DatasetsCallback", "PlacementGroupCleanerCallback"}
    assert lean_controller_env() == {}


def test_train_two_workers_share_one_actor_assignment(ray_local, tmp_path):
    from ray.util.state import list_actors

    from dncml.platform.errors import PlatformError
    from dncml.platform.train import train_on_ray

    spec = smoke_spec(name="two_workers")
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ
    trial_id = train_on_ray(spec, num_workers=2, storage=str(tmp_path / "store"))
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ  # lean_trainer's settings were for that run only
    trials, epochs = read_store(tmp_path / "store", "train")
    assert trials.set_index("trial_id").loc[trial_id, "status"] == "completed"
    assert trials.set_index("trial_id").loc[trial_id, "best_test_recall@1"] > 0  # the selected weights, tested once
    assert sorted(epochs["epoch"]) == list(range(spec.total_epochs))
    assert (epochs["workers"] == 2).all()
    assert epochs["workers_agree"].all()  # both workers trained on the same assignment version
    divided = epochs[epochs["reclustered"] == True]  # noqa: E712
    assert len(divided) == spec.epochs and divided["assignment_digest"].notna().all()
    assert list(divided["assignment_version"]) == list(range(spec.epochs))
    actors = [
        a for a in list_actors(address=state_address(), filters=[("class_name", "=", "ClusteringActor")]) if trial_id in (a.name or "")
    ]
    assert len(actors) == 1  # one actor served both workers
    # lean_trainer on one node: Ray Train started no preemption watcher for this run (or any other)
    assert list_actors(address=state_address(), filters=[("class_name", "=", "PreemptionWatcher")]) == []

    # Ray kept the validation-selected checkpoint beside the newest; `dncml embed --trial` uses it.
    from dncml.platform.store import ResultsStore
    from dncml.trainers.checkpoints import load_checkpoint

    best_epoch = int(trials.set_index("trial_id").loc[trial_id, "best_epoch"])
    selected = ResultsStore(tmp_path / "store").selected_checkpoint("train", trial_id)
    assert load_checkpoint(selected)["state"].epoch == best_epoch + 1
    out = tmp_path / "emb.parquet"
    embedded = run_cli("embed", "--trial", trial_id, "--storage", str(tmp_path / "store"), "--out", str(out), timeout=300)
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert len(pd.read_parquet(out)) > 0

    # --resume of a finished run trains nothing and rewrites nothing; another spec is refused.
    row_file = tmp_path / "store" / "train" / "trials" / f"{trial_id}.parquet"
    written = row_file.stat().st_mtime_ns
    assert train_on_ray(spec, num_workers=2, storage=str(tmp_path / "store"), resume=True) == trial_id
    assert row_file.stat().st_mtime_ns == written
    with pytest.raises(PlatformError, match="different spec .*seed: 0 -> 1"):
        train_on_ray(spec.replace(seed=1), num_workers=2, storage=str(tmp_path / "store"), resume=True)


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, tmp_path):
    from ray.util.state import list_actors

    from dncml.platform.train import train_on_ray

    spec = smoke_spec(name="worker_fault", warmup_epochs=1, epochs=4, finetune_epochs=1, steps_per_epoch=8)
    store = tmp_path / "store"
    thread, outcome = in_background(train_on_ray, spec, num_workers=2, storage=str(store))
    wait_for(lambda: len(epoch_files(store)) >= 2, 300, "two epochs")
    alive_workers = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = wait_for(lambda: list_actors(address=state_address(), filters=alive_workers), 60, "train workers")
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    trials, epochs = read_store(store, "train")
    assert trials["status"].tolist() == ["completed"]
    assert sorted(epochs["epoch"]) == list(range(spec.total_epochs))  # every epoch exactly once
    assert epochs["session"].nunique() >= 2  # a second worker group finished the run


def test_clustering_actor_killed_mid_run_restarts(ray_local, tmp_path):
    import ray

    from dncml.platform.clustering import actor_name
    from dncml.platform.train import train_on_ray

    spec = smoke_spec(name="actor_fault", warmup_epochs=0, epochs=4, finetune_epochs=0, recluster_every=1, steps_per_epoch=8)
    store = tmp_path / "store"
    thread, outcome = in_background(train_on_ray, spec, num_workers=1, storage=str(store))
    wait_for(lambda: len(epoch_files(store)) >= 1, 300, "the first epoch")
    trial_id = (store / "train" / "trials").glob("*.parquet").__next__().stem
    actor = ray.get_actor(actor_name(trial_id))
    first_pid = ray.get(actor.ping.remote())["pid"]
    ray.kill(actor, no_restart=False)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    trials, epochs = read_store(store, "train")
    assert trials["status"].tolist() == ["completed"]
    assert epochs["reclustered"].sum() == spec.epochs  # every round still got its assignment
    assert first_pid > 0


# ----------------------------------------------------------------------------------- sweeps
def test_sweep_records_failed_trial_and_completes_the_rest(ray_local, tmp_path):
    from dncml.platform.sweep import run_sweep

    # A weights file that is no weights passes the RunSpec and data checks (a file that exists)
    # and fails when the trial builds its backbone: a runtime failure of one trial.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights at all")
    variants = [{"glyph_classes": 64}, {"glyph_classes": 80, "pretrained": str(bad)}]
    spec = write_experiment(tmp_path, "partly_broken", {"variant": variants}, rows=["glyph_classes"])
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep, summary = run_sweep(str(spec), storage=str(tmp_path / "store"), mlflow_uri=mlflow_uri)
    trials, epochs = read_store(tmp_path / "store", sweep)
    by_size = trials.set_index("spec_glyph_classes")
    assert by_size.loc[64, "status"] == "completed"
    assert by_size.loc[80, "status"] == "failed"
    assert "Unpickling" in by_size.loc[80, "error"]
    assert set(epochs["trial_id"]) == {by_size.loc[64, "trial_id"]}
    assert summary == {"completed": 1, "failed": 1}
    # one TensorBoard copy per trial: the store's, none of Tune's beside it
    events = [p.relative_to(tmp_path / "store") for p in (tmp_path / "store").rglob("events.out.tfevents*")]
    assert events and all(p.parts[:2] == (sweep, "tensorboard") for p in events)
    card = yaml.safe_load((tmp_path / "store" / sweep / "experiment.json").read_text())
    assert card["experiment"] == "partly_broken" and card["rows"] == ["glyph_classes"]

    # MLflow (through Ray Tune's logger): a run per trial, the whole RunSpec as parameters, every epoch.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("partly_broken").experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["glyph_classes"] for r in runs) == ["64", "80"]  # each trial's own spec
    good = next(r for r in runs if r.data.params["glyph_classes"] == "64")
    assert good.data.params["embedding_dim"] == "32" and good.data.params["grouping"] == "kmeans"
    history = client.get_metric_history(good.info.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1]
    assert len(client.get_metric_history(good.info.run_id, "val_recall_at_1")) >= 1
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}


def test_sweep_whose_first_trials_all_fail_stops_early_with_the_reason(ray_local, tmp_path):
    from dncml.platform.sweep import run_sweep

    # Every grid point passes the RunSpec and data checks and fails as soon as its trial builds
    # its backbone (weights that are no weights).
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not weights at all")
    spec = write_experiment(tmp_path, "all_broken", {"variant": [{"seed": i, "pretrained": str(bad)} for i in range(6)]}, rows=["seed"])
    sweep, summary = run_sweep(str(spec), storage=str(tmp_path / "store"), max_concurrent=2)
    assert summary.get("stopped early") == 1 and summary.get("completed") is None
    trials = pd.read_parquet(tmp_path / "store" / sweep / "trials")
    assert 2 <= len(trials) < 6  # the rest never started
    failed = trials[trials["status"] == "failed"]
    assert len(failed) >= 2 and failed["error"].str.contains("Unpickling").all()
    assert set(trials["status"]) <= {"failed", "interrupted"}  # one started as the sweep stopped


def test_same_seed_same_numbers_alone_or_beside_another_trial(ray_local, tmp_path):
    """A trial's numbers are a function of its spec: seed 0 trained beside seed 1 (two trials
    at once) and alone in another sweep report exactly the same metrics every epoch."""
    from dncml.platform.sweep import run_sweep

    together = write_experiment(tmp_path, "together", {"seed": [0, 1]}, run={"epochs": 2})
    alone = write_experiment(tmp_path, "alone", {"seed": [0]}, run={"epochs": 2})
    store = tmp_path / "store"
    sweeps = [run_sweep(str(spec), storage=str(store), max_concurrent=2)[0] for spec in (together, alone)]
    metrics = []
    for sweep in sweeps:
        trials, epochs = read_store(store, sweep)
        seed0 = trials.loc[trials["spec_seed"] == 0, "trial_id"].item()
        rows = epochs[epochs["trial_id"] == seed0].sort_values("epoch")
        columns = [c for c in rows if c.startswith(("val_", "test_", "selected_")) or c in ("loss", "cluster_sizes", "assignment_digest")]
        metrics.append(rows[columns].reset_index(drop=True))
    assert len(metrics[0]) == 3 and metrics[0]["selected_test_recall@1"].notna().any()
    pd.testing.assert_frame_equal(metrics[0], metrics[1], check_exact=True)


def test_same_seed_same_numbers_under_local_and_on_ray(ray_local, tmp_path):
    """`dncml train --local` computes with the intra-op threads of a Ray Train worker (1 per
    CPU, as Ray sets OMP_NUM_THREADS), so one seed gives one number: before, two local threads
    against one on Ray gave epoch-1 loss 0.6465 against 0.6481 on this warm-up epoch."""
    from dncml.platform.local import train_local
    from dncml.platform.train import train_on_ray

    spec = runspec.load(SMOKE, {"epochs": 0, "finetune_epochs": 0})  # the smoke run's warm-up epoch
    store = tmp_path / "store"
    train_on_ray(spec, storage=str(store), sweep="ray")
    train_local(spec, run_dir=tmp_path / "run", storage=str(store), sweep="local")
    rows = [read_store(store, sweep)[1].sort_values("epoch") for sweep in ("ray", "local")]
    columns = ["loss"] + [c for c in rows[0] if c.startswith(("val_", "test_"))]
    pd.testing.assert_frame_equal(rows[0][columns].reset_index(drop=True), rows[1][columns].reset_index(drop=True), check_exact=True)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    """The race of issue 8, forced: the first trial's `completed` row and every epoch are in the
    store, the trial function has not returned (so Tune still counts it running) and Ctrl-C
    arrives. The resumed sweep must take the store's word and not train that trial again."""
    spec = write_experiment(tmp_path, "resumable", {"seed": [0, 1, 2]}, max_concurrent=1)
    store = tmp_path / "store"
    marker = tmp_path / "paused-after-completed"
    log = tmp_path / "sweep.log"
    process = subprocess.Popen(
        [*CLI, "sweep", str(spec), "--storage", str(store), "--max-concurrent", "1"],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "DNCML_PAUSE_AT": f"after_completed:{marker}"},
    )
    try:
        wait_for(marker.exists, 400, "the first trial to record `completed` and pause")
    finally:
        # SIGTERM (what kill, systemd and schedulers send) to the driver alone, handled as Ctrl-C:
        # Tune stops (the paused trial still running in it). (Ctrl-C in a terminal would also
        # reach the trial's worker process and end it with an error, which Tune records: not the race.)
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    assert process.returncode == 143  # an interrupted sweep is not a success; 143: ended by SIGTERM
    printed = log.read_text()
    assert "interrupted. Resume it with:" in printed and "--resume" in printed and "Traceback" not in printed
    # The console: one line per epoch labelled with the trial's setting, a progress line, no Ray chatter.
    # (The paused trial is still running for Tune, so no progress line can count it done yet.)
    assert "[seed=0] epoch 1/2" in printed, printed[-3000:]
    assert "progress: 0/3 trials done" in printed, printed[-3000:]
    assert "TrainingReport(" not in printed and "Configuration for experiment" not in printed
    sweep = next(store.glob("resumable-*")).name
    before = pd.read_parquet(store / sweep / "trials")
    finished = before[before["status"] == "completed"].set_index("trial_id")["started_at"]
    assert len(finished) == 1
    ((trial_id, started),) = finished.items()
    # its 2 epochs compacted as it ended, then its row and epochs merged into segments by the driver
    # as the interrupted sweep ended (the interrupted trials keep their own files)
    assert not list((store / sweep / "epochs").glob(f"{trial_id}-*.parquet"))
    assert not (store / sweep / "trials" / f"{trial_id}.parquet").exists()
    segments_before = {f: f.stat().st_mtime_ns for f in (store / sweep).glob("*/~segment-*.parquet")}
    assert sorted(f.parent.name for f in segments_before) == ["epochs", "trials"]

    # Tune's own state, replaced by what a store-sharer could write: a resume unpickles none of it.
    import pickle

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    for planted in [*(store / "_ray" / sweep / "tune").glob("*.pkl"), store / "_ray" / sweep / "tune" / "tuner.pkl"]:
        planted.write_bytes(pickle.dumps(Planted()))
    result = run_cli("sweep", str(spec), "--storage", str(store), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    assert f"resuming sweep {sweep}" in result.stdout
    assert set(before["status"]) <= {"completed", "interrupted"}  # no row left `running`
    trials, epochs = read_store(store, sweep)
    assert sorted(trials["status"]) == ["completed"] * 3
    assert trials.set_index("trial_id").loc[trial_id, "started_at"] == started  # not run again
    # Neither its epochs nor its row were rewritten: no Ray Train run was started for it (which
    # would resume from its last checkpoint, train nothing, and record the trial again).
    assert {f: f.stat().st_mtime_ns for f in segments_before} == segments_before
    assert not list((store / sweep / "epochs").glob(f"{trial_id}-*.parquet"))
    assert len(list((store / sweep).glob("*/~segment-*.parquet"))) == 4  # the two resumed trials: merged as it ended
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(epochs) == 3 * 2  # three trials x (epochs 1 + finetune 1), nothing lost


def test_sigterm_to_dncml_train_on_ray_records_interrupted_and_the_resume_command_completes_it(tmp_path):
    store = tmp_path / "store"
    args = ["train", str(SMOKE), "--set", "glyph_classes=64", "--set", "steps_per_epoch=4", "--set", "epochs=4"]
    args += ["--set", "warmup_epochs=0", "--set", "finetune_epochs=0", "--storage", str(store)]
    process = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: epoch_files(store) or process.poll() is not None, 400, "the run's first epoch row")
        os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # what is left of its Ray, by our group only
        except ProcessLookupError:
            pass
    assert process.returncode == 143, (out + err)[-3000:]
    assert "Traceback" not in err and "resume it with:" in err
    assert pd.read_parquet(store / "train" / "trials")["status"].tolist() == ["interrupted"]
    resume = err.split("resume it with:")[1].strip().splitlines()[0].split()
    assert resume[0] == "dncml" and resume[-1] == "--resume"
    result = run_cli(*resume[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    trials, epochs = read_store(store, "train")
    assert trials["status"].tolist() == ["completed"] and sorted(epochs["epoch"]) == [0, 1, 2, 3]


def _orphaned_trainers(names=("RayTrainWorker", "TrainController", "ImplicitFunc", "ClusteringActor")) -> list[int]:
    """Ray processes that could still train or write but whose raylet is gone (re-parented to
    init): what a killed driver would leave behind. (The test session's own Ray workers are
    children of its raylet.)"""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if process.info["ppid"] == 1 and any(n in " ".join(process.info["cmdline"] or []) for n in names):
            found.append(process.info["pid"])
    return found


def _quiet(directory: Path, seconds: float) -> bool:
    """No file in `directory` changed for `seconds`."""
    newest = max((f.stat().st_mtime for f in directory.glob("*.parquet")), default=0.0)
    return time.time() - newest > seconds


def test_killed_sweep_driver_resumes_every_trial_exactly_once(tmp_path):
    """kill -9 of the sweep's driver mid-trial: nothing of it trains on (its trial processes die
    with their driver, so no writer is left behind), and `--resume` completes every trial once:
    no duplicate epochs, no row left `running`."""
    spec = write_experiment(tmp_path, "killed", {"seed": [0, 1]}, run={"epochs": 3}, max_concurrent=1)
    store = tmp_path / "store"
    process = subprocess.Popen(
        [*CLI, "sweep", str(spec), "--storage", str(store)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(list(store.glob("killed-*/epochs/*.parquet"))) >= 2, 400, "two epochs of the first trial")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        sweep = next(store.glob("killed-*")).name
        # Its trial may finish the epoch in flight (the raylet takes a few seconds to notice), then
        # nothing writes any more and no training process survives it.
        wait_for(lambda: _quiet(store / sweep / "epochs", 20), 180, "the killed sweep's store to stay quiet")
        assert not _orphaned_trainers()
        assert "running" in set(pd.read_parquet(store / sweep / "trials")["status"])  # the killed trial's row
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # what is left of its Ray (agents), by our group only
        except ProcessLookupError:
            pass
    result = run_cli("sweep", str(spec), "--storage", str(store), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    trials, epochs = read_store(store, sweep)
    assert sorted(trials["status"]) == ["completed"] * 2
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(list).tolist()) == [[0, 1, 2, 3]] * 2


def test_crash_looping_clustering_actor_fails_the_run_instead_of_hanging(tmp_path):
    store = tmp_path / "store"
    started = time.time()
    result = run_cli(
        "train",
        str(SMOKE),
        "--set",
        "glyph_classes=64",
        "--set",
        "steps_per_epoch=2",
        "--storage",
        str(store),
        timeout=600,
        env={"DNCML_CRASH_AT": "actor_partition"},
    )
    assert result.returncode != 0
    assert "clustering actor" in (result.stdout + result.stderr)
    trials = pd.read_parquet(store / "train" / "trials")
    assert trials["status"].tolist() == ["failed"] and "clustering actor" in trials["error"].iloc[0]
    print(f"failed after {time.time() - started:.0f} s")


def test_a_diverged_run_fails_at_once_and_is_not_retried(ray_local, tmp_path):
    from dncml.platform.train import RunFailed, train_on_ray

    spec = smoke_spec(name="diverged", lr=1e30, lr_embedding=1e30, warmup_epochs=1)
    with pytest.raises(RunFailed, match="not finite at epoch 1, step"):  # not Ray Train's error after retries
        train_on_ray(spec, storage=str(tmp_path / "store"))
    trials = pd.read_parquet(tmp_path / "store" / "train" / "trials")
    assert trials["status"].tolist() == ["failed"] and "NonFiniteLoss" in trials["error"].iloc[0]


# ------------------------------------------------------------------------------- bad input
def test_bad_input_fails_before_any_trial(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    spec = write_experiment(tmp_path, "bad", {"grouping": ["kmeans", "random"]})

    result = run_cli("sweep", str(spec), "--address", f"127.0.0.1:{port}", "--storage", str(tmp_path / "s1"), timeout=120)
    assert result.returncode == 2 and "no Ray cluster answers" in result.stderr

    result = run_cli("sweep", str(spec), "--preset", "nonsense", "--storage", str(tmp_path / "s2"), timeout=120)
    assert result.returncode == 2 and "unknown preset 'nonsense'" in result.stderr

    broken = write_experiment(tmp_path, "bad_point", {"num_learners": [4, 7]})
    result = run_cli("sweep", str(broken), "--storage", str(tmp_path / "s3"), timeout=120)
    assert result.returncode == 2
    assert "grid point num_learners=7" in result.stderr and "K must divide" in result.stderr
    assert not (tmp_path / "s3").exists()  # nothing started, nothing written

    result = run_cli("train", str(SMOKE), "--set", "K=7", "--local", timeout=120)
    assert result.returncode == 2 and "K must divide the embedding size" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------- multi-node cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start --block` in its own process group (ended by `_stop`), its output in `log`.
    A small object store: three Ray instances can be on a CI machine at once."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen(
        [ray_cli, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--object-store-memory=300000000", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    """End only the process group we started (never `ray stop`)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def two_node_cluster(s3_server):
    """A two-node `ray start` cluster on this machine, shared by the module's multi-node tests:
    a head and a second node, each in its own process group (`_stop` ends it), token
    authentication, and no directory shared between them: each node has its own temporary
    directory and glyph cache (`homes[i] / "cache"`), as two machines have. The nodes' environment
    holds the standard AWS variables of the test bucket (`s3_server`), and not the session's
    loopback switch (`ray start` refuses it on a cluster). `env`: what a client needs to reach it."""
    import types

    import ray

    if ray.is_initialized():
        ray.shutdown()  # one Ray instance at a time on this machine keeps Ray's own tools unambiguous
    gcs_port, dashboard_port = _free_port(), _free_port()
    # Each node's dashboard agent on a port of its own: Ray's default (52365) is one per machine,
    # so a second node here, or any other Ray on the machine, would leave a node without its
    # agent, and the head without one refuses jobs ("No available agent to submit job").
    agent_ports = [_free_port(), _free_port()]
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},  # a cluster: not the loopback only
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    address = f"127.0.0.1:{gcs_port}"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # Short paths: Ray's socket paths under a node's temporary directory must fit AF_UNIX's 107
    # bytes, which pytest's tmp_path leaves no room for.
    homes = [Path(tempfile.mkdtemp(prefix=f"dn{name}-", dir="/tmp")) for name in ("h", "n")]
    logs = [home / "node.log" for home in homes]
    nodes = []
    try:
        for home in homes:
            (home / "cache").mkdir()
        node_env = [{**env, "DNCML_CACHE": str(home / "cache")} for home in homes]
        head_args = ["--head", f"--port={gcs_port}", "--num-cpus=2", "--dashboard-host=127.0.0.1"]
        head_args += [f"--dashboard-port={dashboard_port}", "--include-dashboard=true", f"--temp-dir={homes[0] / 'ray'}"]
        head_args += [f"--dashboard-agent-listen-port={agent_ports[0]}"]
        nodes.append(_start_node(head_args, node_env[0], logs[0]))
        wait_for(
            lambda: subprocess.run([ray_cli, "status", f"--address={address}"], env=env, capture_output=True).returncode == 0,
            120,
            "the head node",
        )
        worker_args = [f"--address={address}", "--num-cpus=2", f"--temp-dir={homes[1] / 'ray'}"]
        worker_args += [f"--dashboard-agent-listen-port={agent_ports[1]}"]
        nodes.append(_start_node(worker_args, node_env[1], logs[1]))

        def two_nodes():
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import ray; ray.init(address='{address}', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))",
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            return out.returncode == 0 and out.stdout.strip().endswith("2")

        try:
            wait_for(two_nodes, 300, "the second node to join", interval=3)
        except AssertionError as error:
            raise AssertionError(f"{error}; the node said:\n{logs[1].read_text()[-3000:]}") from None
        yield types.SimpleNamespace(address=address, dashboard=f"http://127.0.0.1:{dashboard_port}", env=env, homes=homes, ray_cli=ray_cli)
    finally:
        for node in reversed(nodes):
            _stop(node)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def test_multinode_cluster_sweep_and_job_submission(tmp_path, two_node_cluster):
    address, env, ray_cli = two_node_cluster.address, two_node_cluster.env, two_node_cluster.ray_cli
    # Two workers of 1.5 CPUs each cannot share a 2-CPU node: the trial's DDP group spans
    # both nodes (and the clustering actor serves workers on two nodes).
    spec = write_experiment(tmp_path, "cluster", {"seed": [0]}, resources={"num_workers": 2, "cpus_per_worker": 1.5})
    store = tmp_path / "store"
    result = run_cli("sweep", str(spec), "--address", address, "--storage", str(store), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next(store.glob("cluster-*")).name
    trials, epochs = read_store(store, sweep)
    assert trials["status"].tolist() == ["completed"]
    assert all(len(ids.split(",")) == 2 for ids in epochs["node_ids"])  # workers on both nodes
    assert epochs["workers_agree"].all()

    # What users do from their laptop: ship their own experiment folder as the job's working
    # directory (its spec names its base run by a relative path) and submit the sweep with no
    # --address. Two 1.5-CPU trials cannot share a 2-CPU node: they run on both nodes.
    user_dir = user_experiment_folder(tmp_path, yaml.safe_load(spec.read_text()), "shipped")
    submit = [ray_cli, "job", "submit", f"--address={two_node_cluster.dashboard}"]

    def submit_job(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*submit, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    job_store = tmp_path / "job_store"
    job = submit_job("--working-dir", str(user_dir), "--", "dncml", "sweep", "shipped.yaml", "--storage", str(job_store))
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "succeeded" in job.stdout.lower()
    job_trials, job_epochs = read_store(job_store, next(job_store.glob("shipped-*")).name)
    assert job_trials["status"].tolist() == ["completed"] * 2
    assert job_epochs.groupby("trial_id")["node_ids"].first().nunique() == 2  # trials on both nodes

    # The code shipped too: dncml as a package directory in py_modules (the workers import it
    # from there), the experiment folder as the working directory, via --runtime-env-json. (A
    # .whl in py_modules breaks in Ray 2.60: the trial's and the Train workers' runtime envs
    # install the same wheel at once on a fresh node and one of them fails.)
    shipped = tmp_path / "ship"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(shipped), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    runtime_env = {"working_dir": str(user_dir), "py_modules": [str(shipped / "dncml")]}
    modules_store = tmp_path / "modules_store"
    job = submit_job("--runtime-env-json", json.dumps(runtime_env), "--", "dncml", "sweep", "shipped.yaml", "--storage", str(modules_store))
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    modules_trials = pd.read_parquet(next(modules_store.glob("shipped-*")) / "trials")
    assert modules_trials["status"].tolist() == ["completed"] * 2


def test_two_nodes_that_share_no_directory_run_a_sweep_from_a_bucket(tmp_path, two_node_cluster, s3_store, s3_server):
    """A two-node `ray start` cluster (token auth) whose nodes share no directory: each its own
    temporary directory and glyph cache, the store only in the bucket (the standard AWS
    variables in every node's environment). A sweep submitted with `ray job submit
    --working-dir` completes with trials on both nodes; a second sweep's driver is killed -9 and
    `--resume` from a fresh process finishes every trial exactly once; `dncml table s3://...`
    and `dncml status` read the bucket, `dncml embed --trial` reads a selected checkpoint back
    from it, and no object in it holds the secret key."""
    import boto3

    from dncml.analysis.store import load_experiment

    address, base_env, ray_cli, homes = two_node_cluster.address, two_node_cluster.env, two_node_cluster.ray_cli, two_node_cluster.homes
    card = yaml.safe_load(write_experiment(tmp_path, "x", {"seed": [0]}).read_text())
    user_dir = user_experiment_folder(tmp_path, card, "bucketjob")  # updates card as it writes it
    job = subprocess.run(
        [ray_cli, "job", "submit", f"--address={two_node_cluster.dashboard}", "--working-dir", str(user_dir), "--"]
        + ["dncml", "sweep", "bucketjob.yaml", "--storage", s3_store],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert job.returncode == 0 and "succeeded" in job.stdout.lower(), (job.stdout + job.stderr)[-3000:]
    data = load_experiment(s3_store, "bucketjob")
    assert data.trials["status"].tolist() == ["completed"] * 2
    assert data.epochs.groupby("trial_id")["node_ids"].first().nunique() == 2  # trials on both nodes
    assert any((homes[1] / "cache").iterdir())  # the second node rendered its own glyphs: nothing shared
    table = run_cli("table", s3_store, "--experiment", "bucketjob")
    assert table.returncode == 0 and "2 completed trials" in table.stdout, table.stderr[-2000:]

    # kill -9 of a sweep's driver on the cluster, then --resume from a fresh process
    (user_dir / "killed.yaml").write_text(yaml.safe_dump({**card, "name": "bucketkill", "run": {**card["run"], "epochs": 3}}))
    second = f"{s3_store}/second"
    filesystem, base = pafs_from(second)
    driver = subprocess.Popen(
        [*CLI, "sweep", str(user_dir / "killed.yaml"), "--address", address, "--storage", second],
        cwd=tmp_path,
        env=base_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: epoch_objects(filesystem, base) >= 2, 400, "two epochs in the bucket")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(10)  # the cluster notices its driver is gone and ends that job's trials
    resumed = run_cli("sweep", str(user_dir / "killed.yaml"), "--address", address, "--storage", second, "--resume", env=base_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    killed = load_experiment(second, "bucketkill")
    assert sorted(killed.trials["status"]) == ["completed"] * 2
    assert not killed.epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(killed.epochs.groupby("trial_id")["epoch"].apply(list).tolist()) == [[0, 1, 2, 3]] * 2
    assert "finished" in run_cli("status", second).stdout
    out = tmp_path / "embeddings.parquet"
    trial = killed.trials["trial_id"].iloc[0]
    embedded = run_cli("embed", "--trial", trial, "--storage", second, "--sweep", killed.sweeps[0], "--out", str(out))
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert len(pd.read_parquet(out)) > 0
    client = boto3.client("s3")
    prefix = s3_store.split("/", 3)[3]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page["Contents"]]
    assert any("/_ray/" in key and key.endswith("state.pt") for key in keys)  # Ray's checkpoints went to the bucket too
    for key in keys:
        assert s3_server.secret.encode() not in client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read(), key


def pafs_from(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def epoch_objects(filesystem, base: str) -> int:
    import pyarrow.fs as pafs

    found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sum("/epochs/" in info.path for info in found)
