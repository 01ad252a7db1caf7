"""The command line in-process runs (`dncml train --local`): resume, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "runs" / "glyphs_smoke.yaml"
CLI = [sys.executable, "-m", "dncml.platform.cli"]
TINY = [
    "--set",
    "glyph_classes=48",
    "--set",
    "image_size=16",
    "--set",
    "embedding_dim=16",
    "--set",
    "steps_per_epoch=2",
    "--set",
    "kmeans_iterations=5",
    "--set",
    "eval_every=10",
]


def dncml(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=os.environ.copy())


def test_local_resume_of_a_finished_run_trains_nothing_and_another_spec_is_refused(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    first = dncml("train", str(SMOKE), "--local", *TINY, "--run-dir", str(run_dir), "--storage", str(store))
    assert first.returncode == 0, first.stderr[-3000:]
    row_file = next((store / "train" / "trials").glob("*.parquet"))
    assert pd.read_parquet(row_file)["status"].tolist() == ["completed"]
    written = row_file.stat().st_mtime_ns

    again = dncml("train", str(SMOKE), "--local", *TINY, "--run-dir", str(run_dir), "--storage", str(store), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed" in again.stdout and "epoch   1/" not in again.stdout
    assert row_file.stat().st_mtime_ns == written

    fresh = dncml("train", str(SMOKE), "--local", *TINY, "--set", "epochs=1", "--run-dir", str(run_dir))
    assert fresh.returncode == 2 and "holds the checkpoints of an earlier run" in fresh.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "epoch-0002", "epoch-0003"]

    other = dncml("train", str(SMOKE), "--local", *TINY, "--set", "seed=1", "--run-dir", str(run_dir), "--storage", str(store), "--resume")
    assert other.returncode == 2 and "different spec" in other.stderr and "seed: 0 -> 1" in other.stderr
    assert "Traceback" not in other.stderr


def test_readme_train_commands_run_in_order_into_their_own_run_directories(tmp_path):
    """The README's `dncml train ... --local`, then the same with `--set grouping=random --set K=4`,
    then `--resume`: each default run directory is new (runs/<name>-<stamp>-<hex>); --resume
    continues the newest run of the same spec (here: finished, so nothing to train)."""

    def train(*extra):
        command = [*CLI, "train", str(SMOKE), "--local", *TINY, "--set", "epochs=1", *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=os.environ.copy())

    first = train()
    assert first.returncode == 0, first.stderr[-3000:]
    second = train("--set", "grouping=random", "--set", "K=4", "--storage", str(tmp_path / "store"))
    assert second.returncode == 0, second.stderr[-3000:]
    row = pd.read_parquet(tmp_path / "store" / "train" / "trials")
    assert row["setting"].tolist() == [
        "glyph_classes=48,image_size=16,embedding_dim=16,steps_per_epoch=2,kmeans_iterations=5,eval_every=10,epochs=1,grouping=random,K=4"
    ]  # what `dncml status` shows
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(p.name.startswith("glyphs_smoke-") and (p / "checkpoints" / "best").is_dir() for p in runs)
    again = train("--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed" in again.stdout and "epoch   1/" not in again.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_cli_basics_version_usage_defaults_and_fast_spec_errors(tmp_path):
    import time

    assert dncml("--version").stdout.startswith("dncml ")
    bare = dncml("train")
    assert bare.returncode == 2 and "needs a RunSpec YAML" in bare.stderr  # not a 20-epoch run on all defaults
    assert "(default: results)" in dncml("sweep", "--help").stdout
    fields = dncml("train", "--help-spec").stdout
    assert "grouping" in fields and "one of: none, kmeans, kmeans_nosplit, random, gt_labels" in fields
    started = time.perf_counter()
    unknown = dncml("sweep", "table6_grouping", "--preset", "huge", "--storage", str(tmp_path / "s"))
    assert unknown.returncode == 2 and "unknown preset 'huge'" in unknown.stderr
    assert time.perf_counter() - started < 15  # no torch, no Ray before the spec is read
    assert not (tmp_path / "s").exists()


def _scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of an event directory: TFRecord frames of `Event` protos."""
    import struct

    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_local_run_writes_tensorboard_events_and_status(tmp_path):
    store = tmp_path / "store"
    result = dncml("train", str(SMOKE), "--local", *TINY, "--run-dir", str(tmp_path / "run"), "--storage", str(store))
    assert result.returncode == 0, result.stderr[-2000:]
    trial = next((store / "train" / "trials").glob("*.parquet")).stem
    scalars = _scalars(store / "train" / "tensorboard" / trial)
    assert [step for step, _ in scalars["loss"]] == [0, 1, 2, 3]
    assert len(scalars["val_recall_at_1"]) == 1  # eval_every=10: the last epoch only
    assert not {"epoch", "total_epochs", "steps", "assignment_version", "best_epoch"} & set(scalars)  # bookkeeping, not measures
    assert {"hparams/best_val_recall_at_1", "hparams/best_test_recall_at_1"} <= set(scalars)  # the HParams view's metrics
    plugins = b"".join(p.read_bytes() for p in (store / "train" / "tensorboard" / trial).glob("events.out.tfevents.*"))
    assert b"hparams" in plugins and b"num_learners" in plugins  # the RunSpec as hyper-parameters
    status = dncml("status", str(store))
    assert status.returncode == 0 and trial in status.stdout and "completed" in status.stdout and "4/4" in status.stdout


def test_a_local_ray_that_cannot_start_gets_one_clear_line(monkeypatch):
    """Ray gives its own raylet a fixed 30 s to register and raises a bare Exception when an
    overloaded machine misses it (seen here with another sweep on 2 cores). Overload cannot be
    produced on demand, so Ray's own exception is raised in place of `ray.init`."""
    import ray

    from dncml.platform import train as platform_train
    from dncml.platform.errors import PlatformError

    def overloaded(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet failed")

    for name in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "0")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", overloaded)
    with pytest.raises(PlatformError, match="local Ray did not start.*Nothing was run"):
        platform_train.connect(None)


def test_small_cli_rough_edges(tmp_path):
    """`datasets prepare cub` gets the friendly message, `datasets list` says what folder
    expects, a mistyped choice gets a "did you mean", and `dncml status | head` ends quietly."""
    cub = dncml("datasets", "prepare", "cub")
    assert cub.returncode == 2 and "'cub' is read from its archive (dncml datasets check cub --root DIR)" in cub.stderr
    folder = dncml("datasets", "list").stdout.split("folder", 1)[1]
    assert "expects under --root / data_root: one sub-folder of images per class" in folder
    typo = dncml("train", "--set", "grouping=kmean")
    assert typo.returncode == 2 and "(did you mean 'kmeans'?)" in typo.stderr
    blamed = dncml("train", str(SMOKE), "--set", "K=7")  # the file is fine: the --set is to blame
    assert blamed.returncode == 2 and blamed.stderr.startswith(f"error: --set (over {SMOKE}): RunSpec field 'num_learners' (K) = 7")
    store = tmp_path / "store"
    for i in range(3000):  # more than a pipe holds (64 KiB) after `head -1` has gone
        (store / f"train{i:04d}" / "trials").mkdir(parents=True)
    piped = subprocess.run(
        f"{sys.executable} -m dncml.platform.cli status {store} | head -1", shell=True, capture_output=True, text=True, cwd=ROOT
    )
    assert piped.stdout.strip() and "BrokenPipe" not in piped.stderr and "Traceback" not in piped.stderr
