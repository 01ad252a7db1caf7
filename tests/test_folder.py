"""`dataset: folder`: your own images, ROOT/<class>/*.jpg|png, on real image files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dncml.trainers.data.base import DatasetError
from dncml.trainers.data.folder import read_folder

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, classes: int = 8, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            suffix = ".jpg" if i % 2 else ".png"
            (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class_{c:02d}" / f"img_{i}{suffix}")
    (root / "class_lonely").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "class_lonely" / "only.png")
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("not a class")
    return root


def test_folder_split_is_class_disjoint_and_seeded(tmp_path):
    root = make_folder(tmp_path / "images")
    bundle = read_folder(root, seed=3)
    train, test = set(bundle.train.labels.tolist()), set(bundle.tests[0].query.labels.tolist())
    assert len(train) == 4 and len(test) == 4 and not train & test  # the 1-image class is left out
    assert bundle.train.paths[0].endswith((".jpg", ".png")) and len(bundle.train) == 24
    assert read_folder(root, seed=3).tests[0].query.paths == bundle.tests[0].query.paths
    assert read_folder(root, seed=4).tests[0].query.paths != bundle.tests[0].query.paths

    (root / "split.txt").write_text("".join(f"class_{c:02d} {'test' if c < 2 else 'train'}\n" for c in range(8)) + "class_lonely train\n")
    by_file = read_folder(root)
    assert sorted(set(by_file.tests[0].query.labels.tolist())) == [0, 1]
    (root / "split.txt").write_text("class_00 test\n")
    with pytest.raises(DatasetError, match="leaves some out"):
        read_folder(root)


def test_datasets_check_and_a_local_run_on_a_folder(tmp_path):
    root = make_folder(tmp_path / "images", classes=16)
    cli = [sys.executable, "-m", "dncml.platform.cli"]
    checked = subprocess.run(
        [*cli, "datasets", "check", "folder", "--root", str(root), "--verify-images"], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert "train" in checked.stdout and "test/query" in checked.stdout
    shown = subprocess.run(
        [*cli, "datasets", "show", "folder", "--root", str(root), "--out", str(tmp_path / "grid.png"), "--rows", "3", "--per-class", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    trained = subprocess.run(
        [
            *cli,
            "train",
            "--local",
            "--set",
            "dataset=folder",
            "--set",
            f"data_root={root}",
            "--set",
            "image_size=32",
            "--set",
            "K=2",
            "--set",
            "d=16",
            "--set",
            "batch_size=8",
            "--set",
            "m=2",
            "--set",
            "epochs=1",
            "--set",
            "val_fraction=0.25",
            "--run-dir",
            str(tmp_path / "run"),
            "--storage",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "test_recall@1" in trained.stdout


def test_the_readme_python_api_runs_on_a_folder(tmp_path, monkeypatch):
    """The README's Python API block, as written, on a folder of real image files."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    images = make_folder(tmp_path / "images", classes=16)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace("~/my_images", str(images)), "README.md", "exec"), namespace)
    trials = namespace["trials"].set_index("trial_id")
    assert trials.loc[namespace["trial_id"], "status"] == "completed"
    assert sorted(namespace["epochs"]["epoch"]) == [0, 1]
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "best").is_dir()


def test_a_left_out_class_is_named_and_a_huge_image_is_refused_before_decoding(tmp_path):
    from dncml.trainers.data.base import MAX_DECODED_PIXELS, open_rgb
    from dncml.trainers.data.benchmarks import check_dataset, verify_image_files

    root = make_folder(tmp_path / "images")
    report = check_dataset("folder", root)
    assert any("class_lonely" in w and "fewer than 2 images" in w for w in report["warnings"]), report["warnings"]
    # 13,000 x 13,000 pixels: under twice PIL's bomb limit (a warning only), 500 MB decoded as RGB.
    huge = tmp_path / "huge.png"
    Image.new("1", (13_000, 13_000)).save(huge)  # a bilevel image: a small file, and cheap to write
    assert MAX_DECODED_PIXELS < 13_000**2
    with pytest.raises(DatasetError, match="13000 x 13000 pixels.*refused"):
        open_rgb(str(huge))
    with pytest.raises(DatasetError, match="huge.png"):
        verify_image_files([str(huge)])
    assert open_rgb(next(iter(sorted((root / "class_00").iterdir())))).mode == "RGB"
