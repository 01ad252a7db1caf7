"""The results store on an S3 bucket (a local S3-compatible server, moto's, as Ray's own storage
tests use) and locally: the same rows, resume semantics, compaction, the atomic lease, the
Optuna study's copy, and bad store URIs. No Ray runtime is started here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dncml.platform.store import ResultsStore, StoreError, TrialRecorder
from dncml.trainers.spec import from_dict

SPEC = from_dict(dict(glyph_classes=48, warmup_epochs=0, epochs=2, finetune_epochs=1))
NAMES = ["val_recall@1"]


def epoch_row(epoch: int, loss: float = 1.0) -> dict:
    return {"epoch": epoch, "total_epochs": 3, "phase": "divide", "loss": loss, "val_recall@1": 0.5 + epoch / 10, "best_epoch": epoch}


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_store")


def test_a_resumed_trial_replaces_its_rerun_epochs_and_ends_compacted(store_uri):
    """Interrupted after epoch 1, resumed from epoch 1: the re-run epoch's row replaces the first
    one, the trial ends `completed` with its epochs in one file, and analysis reads the same."""
    from dncml.analysis.store import load_experiment

    store = ResultsStore(store_uri)
    store.write_card("s", {"experiment": "e", "sweep": "s", "metric": "val_recall@1", "grid": {}})
    first = TrialRecorder(store, "s", "t-1", SPEC, metric_names=NAMES)
    first.epoch(epoch_row(0))
    first.epoch(epoch_row(1, loss=9.0))
    assert first.finish("interrupted") == "interrupted"
    assert [p.rsplit("/", 1)[-1] for p in store.files(store.path("s", "epochs"))] == ["t-1-all.parquet"]
    assert store.finished_trial("s", "t-1", 3) is None  # not completed: it runs again

    again = TrialRecorder(store, "s", "t-1", SPEC, metric_names=NAMES)
    again.epoch(epoch_row(1, loss=2.0))
    # a crash here leaves the compacted file and a newer per-epoch file: the per-epoch row wins
    assert [row["loss"] for row in store.epoch_rows("s", "t-1")] == [1.0, 2.0]
    assert load_experiment(store_uri, "e", require_completed=False).epochs.sort_values("epoch")["loss"].tolist() == [1.0, 2.0]
    again.epoch(epoch_row(2))
    assert again.finish("completed") == "completed"
    assert [p.rsplit("/", 1)[-1] for p in store.files(store.path("s", "epochs"))] == ["t-1-all.parquet"]
    assert [e["loss"] for e in store.finished_trial("s", "t-1", 3)] == [1.0, 2.0, 1.0]  # completed: never re-run
    data = load_experiment(store_uri, "e")
    assert data.epochs.sort_values("epoch")["loss"].tolist() == [1.0, 2.0, 1.0]
    assert data.trials["status"].tolist() == ["completed"] and data.trials["epochs_done"].tolist() == [3]


def test_an_unreadable_trial_file_is_skipped_and_named(store_uri):
    """A foreign, unreadable Parquet file among the trial rows: every reader goes on without it,
    and names it."""
    from dncml.analysis.status import render_status

    store = ResultsStore(store_uri)
    recorder = TrialRecorder(store, "train", "good-1", SPEC, metric_names=NAMES)
    for epoch in range(3):
        recorder.epoch(epoch_row(epoch))
    recorder.finish("completed")
    store.publish(store.path("train", "trials", "junk.parquet"), b"PAR1 not really parquet")
    skipped: list[str] = []
    with pytest.warns(UserWarning, match="junk.parquet"):
        rows = store.trial_rows("train", skipped=skipped)
    assert [row["trial_id"] for row in rows] == ["good-1"] and "junk.parquet" in skipped[0]
    with pytest.warns(UserWarning, match="junk.parquet"):
        assert store.latest_run("train", SPEC.name)["trial_id"] == "good-1"  # `train --resume` finds its run
    with pytest.warns(UserWarning, match="junk.parquet"):
        assert "good-1" in render_status(store_uri)


def test_the_store_holds_no_credentials(s3_store, s3_server):
    """Everything a trial writes into the bucket (rows, card, TensorBoard events, lease, study)
    carries neither the secret key nor the key id."""
    import boto3

    store = ResultsStore(s3_store)
    store.write_card("s", {"experiment": "e", "sweep": "s"})
    with store.lease("s", "sweep"):
        recorder = TrialRecorder(store, "s", "t-1", SPEC, metric_names=NAMES)
        for epoch in range(3):
            recorder.epoch(epoch_row(epoch))
        recorder.finish("completed")
    client = boto3.client("s3")
    prefix = s3_store.split("/", 3)[3]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)["Contents"]]
    assert any("/tensorboard/t-1/" in key for key in keys) and any(key.endswith("t-1-all.parquet") for key in keys)
    for key in keys:
        body = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        assert s3_server.secret.encode() not in body and b"dncml-test-key" not in body, key


RACE = """
import sys, time
from dncml.platform.store import ResultsStore, StoreError
store = ResultsStore(sys.argv[1])
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
try:
    lease = store.lease("s", "sweep").acquire()
except StoreError as error:
    print("refused:", error, flush=True)
else:
    print("won", flush=True)
    time.sleep(3)
    lease.release()
"""


def test_of_drivers_started_together_exactly_one_takes_the_lease(store_uri):
    """Two processes take a sweep's lease at the same instant: one wins, the other is refused with
    one line naming the holder (locally: a flock around check and write; on the bucket: a
    conditional PUT)."""
    at = time.time() + 4.0  # past every process's imports
    racers = [subprocess.Popen([sys.executable, "-c", RACE, store_uri, str(at)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=60)[0].strip() for r in racers]
    assert sorted(o.split(":")[0] for o in outputs) == ["refused", "won"], outputs
    assert all("is still running (pid" in o or "took the lease at the same moment" in o for o in outputs if o != "won")
    ResultsStore(store_uri).lease("s", "sweep").acquire().release()  # released at the end: free again


def test_a_stale_bucket_lease_is_taken_over_and_a_live_one_refused(s3_store, monkeypatch):
    from dncml.platform.store import BucketLease

    store = ResultsStore(s3_store)
    held = store.lease("s", "sweep").acquire()
    with pytest.raises(StoreError, match="still running"):
        store.lease("s", "sweep").acquire()
    held._stop.set()  # its heartbeat stops, as when the driver is killed -9 elsewhere
    monkeypatch.setattr(BucketLease, "STALE", 0.0)
    record = json.loads(store.read_text(store.path("s", ".leases", "sweep.json")))
    store.write_text(store.path("s", ".leases", "sweep.json"), json.dumps({**record, "host": "elsewhere"}))
    taker = store.lease("s", "sweep").acquire()
    assert json.loads(store.read_text(store.path("s", ".leases", "sweep.json")))["token"] == taker._token
    taker.release()


def test_the_study_goes_to_the_bucket_and_comes_back_on_another_machine(s3_store, tmp_path, monkeypatch):
    """SQLite cannot live on S3: the study is on the driver's disk, copied into the store, and a
    resume where this machine has no copy gets it back from there."""
    import optuna

    from dncml.analysis.store import load_study

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "driver-a"))
    (tmp_path / "driver-a").mkdir()
    store = ResultsStore(s3_store)
    study = optuna.create_study(study_name="s", storage=store.prepare_study("s"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    store.save_study("s")
    assert store.is_file(store.path("s", "optuna.db"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "driver-b"))  # another machine: no local copy
    (tmp_path / "driver-b").mkdir()
    store.restore_study("s")
    assert len(optuna.load_study(study_name="s", storage=store.study_url("s")).trials) == 3
    assert len(load_study(s3_store, "s").trials) == 3  # `dncml plot` reads it from the bucket


def test_bad_store_uris_give_one_line_and_change_nothing(s3_server, s3_store, monkeypatch):
    """Unknown scheme, missing bucket, unreachable endpoint: one line each, before anything runs."""
    with pytest.raises(StoreError, match="Unrecognized filesystem type in URI"):
        ResultsStore("nosuch://bucket/prefix")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        ResultsStore("s3://no-such-bucket/prefix").check()
    ResultsStore(s3_store).check()  # the good one passes, and wrote nothing
    assert ResultsStore(s3_store).listdir(ResultsStore(s3_store).base) == []
    result = subprocess.run(
        [sys.executable, "-m", "dncml.platform.cli", "status", "s3://no-such-bucket/x"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr, result.stderr
    from dncml.analysis.store import StoreError as ReadError
    from dncml.analysis.store import load_experiment

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    started = time.time()
    with pytest.raises(StoreError, match="cannot reach it .*Could not connect"):
        ResultsStore(s3_store).check()
    with pytest.raises(ReadError, match="cannot reach it"):
        load_experiment(s3_store, "e")
    assert time.time() - started < 60


def test_analysis_reads_a_bucket_as_it_reads_a_directory(s3_store, tmp_path):
    """The same rows written to a directory and to a bucket read back the same (table input)."""
    from dncml.analysis.store import load_experiment

    frames = []
    for uri in (str(tmp_path / "local"), s3_store):
        store = ResultsStore(uri)
        store.write_card("s", {"experiment": "e", "sweep": "s", "metric": "val_recall@1"})
        for trial in ("a", "b"):
            recorder = TrialRecorder(store, "s", trial, SPEC, metric_names=NAMES)
            for epoch in range(3):
                recorder.epoch(epoch_row(epoch))
            recorder.finish("completed")
        frames.append(load_experiment(uri, "e").epochs.sort_values(["trial_id", "epoch"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_a_checkpoint_comes_back_from_the_bucket(s3_store, tmp_path):
    """`dncml embed --trial` and `train --resume` on another machine read a checkpoint back."""
    store = ResultsStore(s3_store)
    for name in ("state.pt", "spec.yaml"):
        store.publish(store.path("_ray", "s", "t", "checkpoint_1", name), name.encode())
    local = Path(store.local_checkpoint(store.path("_ray", "s", "t", "checkpoint_1"), tmp_path))
    assert sorted(p.name for p in local.iterdir()) == ["spec.yaml", "state.pt"] and (local / "spec.yaml").read_text() == "spec.yaml"


def test_refused_credentials_give_one_line(tmp_path, monkeypatch):
    """A server that checks credentials (moto's, with its IAM checks on) refuses unknown keys:
    one line that says so, for the platform and for analysis."""
    from local_s3 import moto_server

    from dncml.analysis.store import StoreError as ReadError
    from dncml.analysis.store import load_experiment

    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with pytest.raises(StoreError, match="the credentials were refused .*ACCESS_DENIED"):
            ResultsStore("s3://any-bucket/prefix").check()
        with pytest.raises(ReadError, match="the credentials were refused"):
            load_experiment("s3://any-bucket/prefix", "e")


def _ended_trials(store: ResultsStore, sweep: str, count: int, compact: bool, status: str = "completed") -> list[str]:
    """`count` trials of 3 epochs each ended as `status` (the driver merging after each when `compact`)."""
    ids = []
    for t in range(count):
        recorder = TrialRecorder(store, sweep, f"t-{t:03d}", SPEC, metric_names=NAMES)
        for epoch in range(3):
            recorder.epoch(epoch_row(epoch, loss=t + epoch / 10))
        recorder.finish(status)
        ids.append(recorder.trial_id)
        if compact:
            store.compact_sweep(sweep)
    return ids


def _names(store: ResultsStore, sweep: str, directory: str) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in store.files(store.path(sweep, directory))]


def test_ended_trials_merge_into_segments_that_read_the_same(store_uri, tmp_path, monkeypatch):
    """The driver merges ended trials into segment files as they end (here every 4): a sweep of
    10 trials is a few files, and every reader (analysis, status, the platform's per-trial reads) sees exactly
    the rows an unmerged store holds; a running trial stays in its own files."""
    from dncml.analysis.status import sweep_status
    from dncml.analysis.store import load_experiment

    monkeypatch.setattr("dncml.platform.store.SEGMENT_TRIALS", 4)
    merged, plain = ResultsStore(store_uri), ResultsStore(str(tmp_path / "plain"))
    for store in (merged, plain):
        store.write_card("s", {"experiment": "e", "sweep": "s", "metric": "val_recall@1", "grid": {"seed": list(range(11))}})
        _ended_trials(store, "s", 10, compact=store is merged)
        live = TrialRecorder(store, "s", "live", SPEC, metric_names=NAMES)
        live.epoch(epoch_row(0))
    trials = _names(merged, "s", "trials")
    segments = [n for n in trials if n.startswith("~segment-")]
    assert len(segments) == 2 and all(n.startswith("~segment-000004-") for n in segments)
    assert len(trials) == 2 + 2 + 1  # the segments, the 2 not merged yet, the live trial
    assert "live-e0000.parquet" in _names(merged, "s", "epochs")

    a, b = load_experiment(merged.uri, "e", include_running=True), load_experiment(plain.uri, "e", include_running=True)
    for got, want in ((a.trials, b.trials), (a.epochs, b.epochs)):
        columns = [c for c in want.columns if c not in ("started_at", "ended_at", "wall_seconds")]
        pd.testing.assert_frame_equal(got[columns].reset_index(drop=True), want[columns].reset_index(drop=True))
    shown = sweep_status(merged.uri.rstrip("/") + "/s")[1]
    assert len(shown) == 11 and (shown["status"] == "completed").sum() == 10
    assert merged.trial_row("s", "t-000")["status"] == "completed"  # from the segment
    assert [e["loss"] for e in merged.epoch_rows("s", "t-000")] == [0.0, 0.1, 0.2]
    assert merged.finished_trial("s", "t-005", 3) is not None
    assert merged.statuses("s") == plain.statuses("s")

    assert merged.compact_sweep("s", final=True) == 2  # the sweep's end: what is left, in one more segment
    assert len([n for n in _names(merged, "s", "trials") if n.startswith("~segment-")]) == 3
    assert _names(merged, "s", "trials")[0] == "live.parquet"  # still running: its own file
    assert len(load_experiment(merged.uri, "e", include_running=True).epochs) == 10 * 3 + 1


def test_a_merge_cut_short_leaves_every_row_once_and_a_newer_row_wins(store_uri, monkeypatch):
    """A driver killed between publishing a segment and removing the merged files leaves two
    copies of each row: readers keep one, and the next merge finishes the job. A trial row
    written after its trial was merged (a newer write) wins over the segment's copy."""
    from dncml.analysis.store import load_experiment

    store = ResultsStore(store_uri)
    store.write_card("s", {"experiment": "e", "sweep": "s", "metric": "val_recall@1", "grid": {}})
    _ended_trials(store, "s", 3, compact=False)
    monkeypatch.setattr(ResultsStore, "delete", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        store.compact_sweep("s", final=True)
    monkeypatch.undo()
    assert len(_names(store, "s", "trials")) == 4 and len(_names(store, "s", "epochs")) == 4  # both copies
    data = load_experiment(store_uri, "e")
    assert sorted(data.trials["trial_id"]) == ["t-000", "t-001", "t-002"] and len(data.epochs) == 9
    assert len(store.epoch_rows("s", "t-001")) == 3
    store.compact_sweep("s", final=True)
    assert len(load_experiment(store_uri, "e").epochs) == 9
    assert all(n.startswith("~segment-") for n in _names(store, "s", "trials") + _names(store, "s", "epochs"))

    again = TrialRecorder(store, "s", "t-001", SPEC, metric_names=NAMES, start=False)
    again.history = store.epoch_rows("s", "t-001")
    again._write("failed", error="rewritten")
    assert store.trial_row("s", "t-001")["error"] == "rewritten"
    assert load_experiment(store_uri, "e").trials.set_index("trial_id").loc["t-001", "status"] == "failed"


def test_only_ended_trials_are_merged(store_uri):
    """Running and interrupted trials (a resumed sweep runs them again) keep their own files;
    completed, failed and pruned ones (their end stands) are merged."""
    store = ResultsStore(store_uri)
    for status in ("completed", "failed", "pruned", "interrupted"):
        TrialRecorder(store, "s", f"{status}-1", SPEC, metric_names=NAMES).finish(status) if status != "completed" else None
    _ended_trials(store, "s", 1, compact=False)
    TrialRecorder(store, "s", "running-1", SPEC, metric_names=NAMES)
    assert store.compact_sweep("s") == 0  # fewer than a segment's worth, and not the end
    assert store.compact_sweep("s", final=True) == 3
    own = [n for n in _names(store, "s", "trials") if not n.startswith("~segment-")]
    assert own == ["interrupted-1.parquet", "running-1.parquet"]
    assert sorted(store.statuses("s")) == ["failed-1", "interrupted-1", "pruned-1", "running-1", "t-000"]
