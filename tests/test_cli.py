"""The command line in-process runs (`dncml train --local`): resume, and what it refuses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "runs" / "glyphs_smoke.yaml"
CLI = [sys.executable, "-m", "dncml.platform.cli"]
TINY = ["--set", "glyph_classes=48", "--set", "image_size=16", "--set", "embedding_dim=16", "--set", "steps_per_epoch=2",
        "--set", "kmeans_iterations=5", "--set", "eval_every=10"]


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

    other = dncml("train", str(SMOKE), "--local", *TINY, "--set", "seed=1", "--run-dir", str(run_dir),
                  "--storage", str(store), "--resume")
    assert other.returncode == 2 and "different spec" in other.stderr and "seed: 0 -> 1" in other.stderr
    assert "Traceback" not in other.stderr
