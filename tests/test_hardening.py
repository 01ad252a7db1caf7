"""What a store-sharer, a careless user or a crashing machine tries (issue 21), on real files and
real processes: nothing here starts Ray."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
NO_WARMUP = ["--set", "warmup_epochs=0", "--set", "finetune_epochs=0"]


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


def pause_at(point: str, marker: Path) -> dict:
    """The environment of a process that pauses at fault point `point` (platform/faults.py)."""
    return {**os.environ, "DNCML_PAUSE_AT": f"{point}:{marker}"}


def wait_for_pause(process: subprocess.Popen, marker: Path, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), process.communicate(timeout=30)


def test_sigterm_to_a_local_run_records_interrupted_and_prints_the_resume_command(tmp_path):
    import signal

    import pandas as pd

    run_dir, store, marker = tmp_path / "run", tmp_path / "store", tmp_path / "recorded"
    args = ["train", str(SMOKE), "--local", *TINY, "--set", "epochs=3", "--run-dir", str(run_dir), "--storage", str(store)]
    process = subprocess.Popen(
        [*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pause_at("local_recorded", marker)
    )
    try:
        wait_for_pause(process, marker)
        from dncml.analysis.status import render_status

        shown = render_status(store)  # the run is live: its lease is in the store as well as in its run directory
        assert ": running (pid" in shown and "interrupted?" not in shown, shown
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "--resume" in err and str(run_dir) in err
    (status,) = pd.read_parquet(store / "train" / "trials")["status"]
    assert status == "interrupted"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML that expand to width ** levels strings."""
    lines = [f"  - &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bombs_are_refused_at_once_in_one_short_line(tmp_path):
    import pytest

    from dncml.experiments.loader import ExperimentError, load_experiment

    run = tmp_path / "bomb_run.yaml"
    run.write_text("pretrained:\n" + alias_bomb())
    started = time.time()
    result = dncml("train", str(run), "--local", timeout=60)
    assert result.returncode == 2 and "expands to more than" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr) < 1000 and time.time() - started < 30
    experiment = tmp_path / "bomb_experiment.yaml"
    experiment.write_text(f"name: bomb\nbase: {SMOKE}\ngrid: {{seed: [0]}}\ndescription:\n" + alias_bomb())
    with pytest.raises(ExperimentError, match="expands to more than") as error:
        load_experiment(experiment)
    assert len(str(error.value)) < 1000


def test_every_numeric_field_is_bounded_and_a_huge_prime_d_fails_at_once():
    import pytest

    from dncml.trainers import spec as runspec

    started = time.time()
    with pytest.raises(runspec.SpecError, match="'embedding_dim' = 1000000007: must be <= 8192"):
        runspec.from_dict({}, runspec.parse_overrides(["d=1000000007", "K=3"]))
    assert time.time() - started < 1
    for field, value in [
        ("seed", 2**64),
        ("dataset_seed", 2**63),
        ("glyph_classes", 10**9),
        ("glyph_instances", 12 * 10**6),
        ("num_learners", 131072),
        ("batch_size", 10**9),
        ("epochs", 10**9),
    ]:
        with pytest.raises(runspec.SpecError, match=f"'{field}' = .*must be <="):
            runspec.from_dict({field: value})
    with pytest.raises(runspec.SpecError, match="glyphs are rendered at most 256 pixels"):
        runspec.from_dict({"image_size": 512})
    # a d with many divisors lists the first 24 (8190 = 2 x 3^2 x 5 x 7 x 13 has 48)
    with pytest.raises(runspec.SpecError, match=r"allowed K: 1, 2, 3, 5, 6, 7, 9, 10, 13, 14, .*, 90, \.\.\.$"):
        runspec.from_dict({"embedding_dim": 8190, "num_learners": 4})
    assert runspec.from_dict({"seed": 2**63 - 1, "embedding_dim": 8192, "num_learners": 8}).seed == 2**63 - 1


def test_cli_errors_are_one_line_exit_2_for_bad_input_and_1_for_a_machine_failure(tmp_path):
    # A checkpoint of pickled objects: refused (ValueError), one line, exit 2, and it ran nothing.
    marker = tmp_path / "pwned"
    planted = tmp_path / "checkpoint"
    plant_pickle(planted / "state.pt", marker)
    (planted / "spec.yaml").write_text(SMOKE.read_text())
    result = dncml("embed", str(planted), "--out", str(tmp_path / "e.parquet"))
    assert result.returncode == 2 and "refused" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    # An OSError that is no missing input (the output's folder is a file): one line, exit 1 ...
    out = tmp_path / "a-file" / "grid.png"
    out.parent.write_text("")
    glyphs = ["datasets", "show", "glyphs", "--classes", "48", "--image-size", "16", "--rows", "2", "--out", str(out)]
    result = dncml(*glyphs)
    assert result.returncode == 1 and "Error: [Errno" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    # ... and the whole trace with -v.
    result = dncml("-v", *glyphs)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "store").mkdir()
    process = subprocess.Popen([*CLI, "status", str(tmp_path / "store")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is printed, as after `| head -0`
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141 and b"Traceback" not in err and b"BrokenPipe" not in err, err[-2000:]


def test_a_crash_between_the_last_checkpoint_and_its_epoch_row_is_repaired_by_resume(tmp_path):
    import pandas as pd

    run_dir, store = tmp_path / "run", tmp_path / "store"
    args = ["train", str(SMOKE), "--local", *TINY, "--set", "epochs=2", *NO_WARMUP, "--run-dir", str(run_dir), "--storage", str(store)]
    crashed = dncml(*args, env={"DNCML_CRASH_AT": "local_checkpointed_e1"})
    assert crashed.returncode == 70, crashed.stderr[-2000:]  # died as a kill would, after epoch 2's checkpoint
    assert (run_dir / "checkpoints" / "epoch-0001").is_dir()
    assert sorted(pd.read_parquet(store / "train" / "epochs")["epoch"]) == [0]  # its row never written
    resumed = dncml(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "re-recorded epoch(s) 2" in resumed.stdout and "already completed" not in resumed.stdout
    assert sorted(pd.read_parquet(store / "train" / "epochs")["epoch"]) == [0, 1]
    (status,) = pd.read_parquet(store / "train" / "trials")["status"]
    assert status == "completed"


def test_a_truncated_newest_checkpoint_is_passed_over_for_the_newest_good_one(tmp_path):
    import pandas as pd

    run_dir, store = tmp_path / "run", tmp_path / "store"
    args = ["train", str(SMOKE), "--local", *TINY, "--set", "epochs=2", *NO_WARMUP, "--run-dir", str(run_dir), "--storage", str(store)]
    crashed = dncml(*args, env={"DNCML_CRASH_AT": "local_checkpointed_e1"})
    assert crashed.returncode == 70, crashed.stderr[-2000:]
    newest = run_dir / "checkpoints" / "epoch-0001" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # what a crash mid-write of an unsynced file leaves
    resumed = dncml(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch-0001 cannot be read" in resumed.stdout and "passed over" in resumed.stdout
    epochs = pd.read_parquet(store / "train" / "epochs")
    assert sorted(epochs["epoch"]) == [0, 1] and pd.read_parquet(store / "train" / "trials")["status"].tolist() == ["completed"]


def test_status_and_table_skip_and_name_a_truncated_card_and_a_trial_file_without_trial_columns(tmp_path):
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dncml.analysis.status import render_status
    from dncml.analysis.store import list_experiments

    store = tmp_path / "store"
    good, broken, odd = (store / name for name in ("good-default-20260101-000000-aaaaaa", "broken-default-20260101-000000-bbbbbb", "train"))
    for sweep in (good, broken):
        (sweep / "trials").mkdir(parents=True)
        row = {"trial_id": f"{sweep.name[:4]}_00000", "status": "completed", "spec_epochs": 1}
        pq.write_table(pa.table({k: [v] for k, v in row.items()}), sweep / "trials" / "t.parquet")
    (good / "experiment.json").write_text(json.dumps({"experiment": "good", "preset": "default", "metric": "val_recall@1"}))
    (broken / "experiment.json").write_text('{"experiment": "broken", "pre')  # truncated by a full disk
    (odd / "trials").mkdir(parents=True)
    pq.write_table(pa.table({"something": [1]}), odd / "trials" / "foreign.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(list_experiments(store)) == ["good"]
    assert any("skipped sweep broken-default" in str(w.message) for w in caught)
    shown = render_status(store)
    assert "good_00000" in shown and "brok_00000" in shown  # every sweep shown ...
    assert "skipped:" in shown and "cannot read the experiment card" in shown  # ... and what could not be read named
    assert "without a trial_id column" in shown


def test_a_resumed_search_settles_its_study_from_the_store(tmp_path):
    """The study the interrupted search left: a trial the store holds as completed is told its
    value, the others fail (the resumed sweep evaluates their points again)."""
    import optuna
    from optuna.trial import TrialState

    from dncml.platform.tracking import optuna_storage, resume_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=optuna_storage(url), direction="maximize")
    done, cut = (
        study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}),
        study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}),
    )
    rows = [
        {"trial_id": "a_1", "status": "completed", "spec_lr": done.params["lr"], "best_val_recall@1": 0.75},
        {"trial_id": "a_2", "status": "running", "spec_lr": cut.params["lr"], "best_val_recall@1": None},
    ]
    resume_study(url, "s", rows, "best_val_recall@1")
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=optuna_storage(url)).get_trials()}
    assert trials[done.number].state == TrialState.COMPLETE and trials[done.number].value == 0.75
    assert trials[cut.number].state == TrialState.FAIL


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64m"):
    """A real filesystem of its own at `path` (tmpfs), so a test can fill it; skipped where this
    process may not mount (not root, or a container without the capability)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path) -> Path:
    """Write a filler file until the filesystem says it is full (unbuffered: every byte lands)."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(descriptor, b"\0" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    finally:
        os.close(descriptor)
    return filler


def test_a_full_disk_mid_run_loses_nothing_written_and_status_and_resume_read_it_right(tmp_path):
    """A local run whose run directory and store fill up after its first epoch: it stops with one
    line (exit 1), the first epoch's checkpoint and row are intact, `dncml status` shows the run
    `interrupted?` (its row could not say `failed`: the disk was full), and once there is room
    `--resume` finishes it with every epoch recorded exactly once."""
    import pandas as pd

    from dncml.analysis.status import render_status

    with small_disk(tmp_path / "disk") as disk:
        run_dir, store, marker = disk / "run", disk / "store", tmp_path / "checkpointed"
        args = ["train", str(SMOKE), "--local", *TINY, "--set", "epochs=3", "--run-dir", str(run_dir), "--storage", str(store)]
        env = pause_at("local_recorded", marker)  # after the first epoch's row
        process = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_for_pause(process, marker)
            first_rows = pd.read_parquet(store / "train" / "epochs")
            filler = _fill(disk)
            marker.unlink()  # the run goes on, onto a full disk
            out, err = process.communicate(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 1, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err[-3000:]
        assert (run_dir / "checkpoints" / "epoch-0000" / "state.pt").is_file()
        pd.testing.assert_frame_equal(pd.read_parquet(store / "train" / "epochs"), first_rows)  # nothing written was lost
        (status,) = pd.read_parquet(store / "train" / "trials")["status"]
        assert status == "running"  # the failure row could not be written ...
        assert "interrupted?" in render_status(store)  # ... and status reads it right

        filler.unlink()
        again = subprocess.run([*CLI, *args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        epochs = pd.read_parquet(store / "train" / "epochs")
        assert sorted(epochs["epoch"]) == list(range(int(epochs["total_epochs"].iloc[0]))) and len(epochs) > len(first_rows)
        (status,) = pd.read_parquet(store / "train" / "trials")["status"]
        assert status == "completed"
