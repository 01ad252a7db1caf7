"""Your own images: `dataset: folder`, `data_root: ROOT` with one sub-folder of images per class.

    ROOT/
      <class name>/ *.jpg | *.jpeg | *.png | *.bmp | *.webp
      ...
      split.txt            optional: one line per class, "<class name> train" or "<class name> test"

Train and test are class-disjoint, as in the DML benchmarks: without `split.txt`, the classes
are shuffled with the run's `dataset_seed` and half of them (rounded up) train, the rest test.
Classes with fewer than 2 images cannot form a positive pair and are left out (named in
`dncml datasets check folder`). Photos get the benchmarks' transforms; Recall@1, 2, 4, 8.
Hidden files and folders (names starting with '.') are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .base import DatasetBundle, DatasetError, EvalSet, ImageSplit, require_dir, verified

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RECALL_KS = DATASETS.info("folder").recall_ks
SPLIT_FILE = "split.txt"


def class_folders(root: Path) -> dict[str, list[str]]:
    """Class name -> its image files (sorted), for every visible sub-folder of root."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(
            str(f) for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        classes[folder.name] = images
    return classes


def _read_split_file(path: Path, classes: list[str]) -> set[str]:
    """The test classes named in split.txt; every class must be listed exactly once."""
    assigned: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, part = line.rstrip().rpartition(" ")
        if part not in ("train", "test") or not name.strip():
            raise DatasetError(f"{path}, line {number}: expected '<class name> train' or '<class name> test', got {line!r}")
        if name.strip() in assigned:
            raise DatasetError(f"{path}, line {number}: class {name.strip()!r} is listed twice")
        assigned[name.strip()] = part
    unknown = sorted(set(assigned) - set(classes))
    missing = sorted(set(classes) - set(assigned))
    if unknown or missing:
        raise DatasetError(
            f"{path}: names classes that are not folders ({unknown[:5]}) or leaves some out ({missing[:5]}); "
            "every class folder must be listed once"
        )
    return {name for name, part in assigned.items() if part == "test"}


@DATASETS.register("folder")
def read_folder(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
    base = require_dir(Path(os.path.abspath(os.path.expanduser(os.fspath(root)))), "image folder (one sub-folder per class)")
    found = class_folders(base)
    classes = sorted(name for name, images in found.items() if len(images) >= 2)
    lonely = sorted(name for name, images in found.items() if len(images) < 2)
    shown = ", ".join(lonely[:10]) + (", ..." if len(lonely) > 10 else "")
    notes = [f"left out {len(lonely)} class folder(s) with fewer than 2 images (no positive pair): {shown}"] if lonely else []
    if len(classes) < 4:
        raise DatasetError(
            f"{base}: {len(classes)} class folders with >= 2 images; need at least 4 "
            "(2 to train on, 2 to test: train and test are class-disjoint)"
        )
    if (base / SPLIT_FILE).is_file():
        test_classes = _read_split_file(base / SPLIT_FILE, sorted(found))
    else:
        order = np.random.default_rng([seed, 4099]).permutation(len(classes))
        test_classes = {classes[i] for i in order[(len(classes) + 1) // 2 :]}

    def split(name: str, members: list[str]) -> ImageSplit:
        paths = [path for c in members for path in found[c]]
        labels = [classes.index(c) for c in members for _ in found[c]]
        if not paths:
            raise DatasetError(f"{base}: the {name} split holds no class")
        return ImageSplit(name=name, labels=np.asarray(labels, dtype=np.int64), paths=paths)

    train = split("train", [c for c in classes if c not in test_classes])
    test = split("test", [c for c in classes if c in test_classes])
    bundle = DatasetBundle(name="folder", train=train, tests=[EvalSet("test", test, None, RECALL_KS)], recall_ks=RECALL_KS, notes=notes)
    return verified(bundle, verify_images)
