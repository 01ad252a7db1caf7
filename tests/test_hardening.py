"""What a store-sharer, a careless user or a crashing machine tries (issue 21), on real files and
real processes: nothing here starts Ray."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "runs" / "glyphs_smoke.yaml"
CLI = [sys.executable, "-m", "dncml.platform.cli"]


def dncml(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


class Planted:
    """A pickle that, once loaded, writes a marker file: what a store-sharer would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Planted(marker)))


def experiment_spec(tmp_path: Path, name: str = "planted") -> Path:
    card = {"name": name, "base": str(SMOKE), "grid": {"seed": [0, 1]}, "rows": ["seed"], "run": {"epochs": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def test_resume_of_a_planted_sweep_without_a_card_unpickles_nothing(tmp_path):
    spec, store, marker = experiment_spec(tmp_path), tmp_path / "store", tmp_path / "pwned"
    sweep = "planted-default-20990101-000000-abcdef"  # newer than any real one
    (store / sweep / "trials").mkdir(parents=True)
    plant_pickle(store / "_ray" / sweep / "tune" / "tuner.pkl", marker)
    plant_pickle(store / "_ray" / sweep / "tune" / "searcher-state-x.pkl", marker)
    result = dncml("sweep", str(spec), "--storage", str(store), "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no sweep of planted" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    # Chosen by id, it is refused too: no card, nothing this store started.
    result = dncml("sweep", str(spec), "--storage", str(store), "--resume", "--sweep", sweep)
    assert result.returncode == 2 and "no experiment card" in result.stderr, result.stderr[-2000:]
    assert not marker.exists()


def test_resume_refuses_a_sweep_folder_that_is_a_symlink(tmp_path):
    spec, store, elsewhere = experiment_spec(tmp_path), tmp_path / "store", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "experiment.json").write_text(json.dumps({"experiment": "planted"}))
    store.mkdir()
    sweep = "planted-default-20990101-000000-abcdef"
    (store / sweep).symlink_to(elsewhere)
    result = dncml("sweep", str(spec), "--storage", str(store), "--resume", "--sweep", sweep)
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr[-2000:]


TINY = ["--set", "glyph_classes=48", "--set", "image_size=16", "--set", "embedding_dim=16", "--set", "steps_per_epoch=2"]
TINY += ["--set", "kmeans_iterations=5", "--set", "eval_every=10", "--set", "epochs=1"]


def test_a_tampered_trial_id_in_a_run_directory_is_refused(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    run_dir.mkdir()
    (run_dir / "trial_id").write_text("../../escaped")
    result = dncml("train", str(SMOKE), "--local", *TINY, "--run-dir", str(run_dir), "--storage", str(store), "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trial id" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped.parquet").exists() and not list(tmp_path.glob("**/escaped*"))


def test_a_tampered_trial_id_in_a_trial_row_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    trials = tmp_path / "store" / "train" / "trials"
    trials.mkdir(parents=True)
    row = {"trial_id": "../../../escaped", "spec_name": "glyphs_smoke", "status": "running", "started_at": "2099-01-01T00:00:00"}
    pq.write_table(pa.table({k: [v] for k, v in row.items()}), trials / "planted.parquet")
    result = dncml("train", str(SMOKE), *TINY, "--storage", str(tmp_path / "store"), "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trial id" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/escaped*"))


def test_a_sweep_folder_that_is_a_symlink_gets_no_rows(tmp_path):
    elsewhere, store = tmp_path / "elsewhere", tmp_path / "store"
    elsewhere.mkdir()
    store.mkdir()
    (store / "train").symlink_to(elsewhere)
    result = dncml("train", str(SMOKE), "--local", *TINY, "--run-dir", str(tmp_path / "run"), "--storage", str(store))
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr[-2000:]
    assert not any(elsewhere.iterdir())


def test_data_root_expands_only_documented_variables_and_keeps_them_out_of_the_store(tmp_path):
    home = tmp_path / "home-secret-4711"
    home.mkdir()
    env = {"HOME": str(home), "DNCML_SECRET_TOKEN": "hunter2-secret"}
    folder = ["--set", "dataset=folder", "--set", "image_size=32"]
    result = dncml("train", "--local", *folder, "--set", "data_root=${DNCML_SECRET_TOKEN}/images", env=env)
    assert result.returncode == 2 and "DNCML_SECRET_TOKEN" in result.stderr, result.stderr[-2000:]
    assert "hunter2" not in result.stdout + result.stderr
    store = tmp_path / "store"
    result = dncml(
        "train", "--local", *folder, "--set", "data_root=${HOME}/no-such-images", "--run-dir", str(tmp_path / "run"),
        "--storage", str(store), env=env,
    )  # fmt: skip
    assert result.returncode != 0 and "${HOME}/no-such-images" in result.stderr, result.stderr[-2000:]
    assert "home-secret-4711" not in result.stderr
    import pandas as pd

    (error,) = pd.read_parquet(store / "train" / "trials")["error"]
    assert "${HOME}/no-such-images" in error and "home-secret-4711" not in error


def test_sigterm_to_a_local_run_records_interrupted_and_prints_the_resume_command(tmp_path):
    import signal

    import pandas as pd

    run_dir, store, marker = tmp_path / "run", tmp_path / "store", tmp_path / "recorded"
    args = ["train", str(SMOKE), "--local", *TINY, "--set", "epochs=3", "--run-dir", str(run_dir), "--storage", str(store)]
    process = subprocess.Popen(
        [*CLI, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DNCML_PAUSE_AT": f"local_recorded:{marker}"},
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), process.communicate(timeout=30)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "--resume" in err and str(run_dir) in err
    (status,) = pd.read_parquet(store / "train" / "trials")["status"]
    assert status == "interrupted"
