"""Dataset containers shared by every reader: what a split is, what an evaluation set is.

A reader (glyphs, CUB, Cars, ...) turns files on disk into a `DatasetBundle`; the trainer only
ever sees these types, so every dataset trains and evaluates through the same code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset directory, file or image is missing or malformed (the message names the path)."""


@dataclass
class ImageSplit:
    """A set of labelled images: either an in-memory uint8 array or a list of image files.

    labels: class id per image (int64; ids of the original dataset, not remapped).
    groups: a coarser "ground-truth grouping" label per image (glyph script, SOP super-class);
            -1 where the dataset has none.
    """

    name: str
    labels: np.ndarray
    images: np.ndarray | None = None  # uint8, (n, H, W) grayscale or (n, H, W, 3)
    paths: list[str] | None = None
    groups: np.ndarray | None = None
    # paths inside a packed dataset (`pack.PackedImages`): the bytes are read from its shards
    pack: object | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError(f"split {self.name!r}: give exactly one of images or paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if len(self.labels) != n:
            raise ValueError(f"split {self.name!r}: {n} images but {len(self.labels)} labels")
        if self.groups is None:
            self.groups = np.full(n, -1, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(len(np.unique(self.labels)))

    @property
    def has_groups(self) -> bool:
        return bool((self.groups >= 0).any())

    def subset(self, indices: np.ndarray, name: str | None = None) -> ImageSplit:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSplit(
            name=name or self.name,
            labels=self.labels[indices],
            images=self.images[indices] if self.images is not None else None,
            paths=[self.paths[i] for i in indices] if self.paths is not None else None,
            groups=self.groups[indices],
            pack=self.pack,
        )

    def read_bytes(self, index: int) -> bytes:
        """The encoded file of image `index` (from its pack, or from disk); DatasetError if it is missing."""
        path = self.paths[index]
        if self.pack is not None:
            return self.pack.read(path)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise DatasetError(f"missing image file: {path}") from None
        except OSError as exc:
            raise DatasetError(f"cannot read image file {path}: {exc}") from None


@dataclass
class EvalSet:
    """What one retrieval evaluation runs on.

    gallery None: every query image retrieves among all the others (CUB, Cars, SOP, VehicleID).
    gallery set: queries retrieve from a separate gallery (In-shop).
    """

    name: str
    query: ImageSplit
    gallery: ImageSplit | None
    recall_ks: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.query) + (len(self.gallery) if self.gallery is not None else 0)


@dataclass
class DatasetBundle:
    name: str
    train: ImageSplit
    tests: list[EvalSet]
    recall_ks: tuple[int, ...]
    channels: int = 3
    group_names: dict[int, str] = field(default_factory=dict)
    val: EvalSet | None = None
    notes: list[str] = field(default_factory=list)  # what the reader left out, and why (`datasets check` shows them)
    class_names: dict[int, str] = field(default_factory=dict)  # label -> a readable name (glyphs: the glyph, U+code point)

    def summary(self) -> dict:
        rows = {"train": (len(self.train), self.train.num_classes)}
        if self.val is not None:
            rows["val"] = (len(self.val.query), self.val.query.num_classes)
        for test in self.tests:
            rows[f"{test.name}/query"] = (len(test.query), test.query.num_classes)
            if test.gallery is not None:
                rows[f"{test.name}/gallery"] = (len(test.gallery), test.gallery.num_classes)
        return {k: {"images": n, "classes": c} for k, (n, c) in rows.items()}


def carve_validation(train: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split whole classes off the training set for model selection (never the test set).

    Classes are drawn per group label where there is one, so validation spans every group.
    Returns (train without those classes, validation split).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    classes = np.unique(train.labels)
    if fraction == 0.0:
        return train, train.subset(np.array([], dtype=np.int64), name="val")
    rng = np.random.default_rng([seed, 7919])
    class_group = {c: int(train.groups[train.labels == c][0]) for c in classes}
    val_classes: list[int] = []
    for group in sorted(set(class_group.values())):
        members = np.array(sorted(c for c, g in class_group.items() if g == group))
        rng.shuffle(members)
        take = int(round(len(members) * fraction))
        val_classes.extend(members[:take].tolist())
    if len(val_classes) < 2 and len(classes) >= 4:
        val_classes = rng.choice(classes, size=2, replace=False).tolist()
    in_val = np.isin(train.labels, np.array(val_classes, dtype=np.int64))
    return train.subset(np.flatnonzero(~in_val), "train"), train.subset(np.flatnonzero(in_val), "val")


def default_cache_dir() -> Path:
    """$DNCML_CACHE, else $XDG_CACHE_HOME/dncml, else ~/.cache/dncml."""
    if os.environ.get("DNCML_CACHE"):
        return Path(os.environ["DNCML_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dncml"


def require_file(path: Path, what: str) -> Path:
    """Return path if it is a file, else a DatasetError naming it and what it should hold."""
    if not path.is_file():
        raise DatasetError(f"missing {what}: expected a file at {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"missing {what}: expected a directory at {path}")
    return path


def check_files_exist(paths: Iterable[str | os.PathLike], what: str = "image files", shown: int = 5) -> int:
    """Stat every distinct path (no file is opened): DatasetError unless each is a non-empty file.

    The cheap check to run before any worker starts: it catches a missing, misplaced or
    zero-byte image (an interrupted copy or download) in seconds, where training would only
    fail on it mid-epoch. It does not read pixels; a truncated but non-empty file passes (decode
    with `benchmarks.verify_image_files` for that). The message gives how many files are missing
    (and how many are empty) out of how many, and names the first `shown` of each.

    Returns the number of distinct files checked.
    """
    distinct = list(dict.fromkeys(os.fspath(p) for p in paths))
    missing: list[str] = []
    empty: list[str] = []
    for p in distinct:
        try:
            st = os.stat(p)
        except OSError:
            missing.append(p)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(p)
        elif st.st_size == 0:
            empty.append(p)
    problems = []
    for files, state in ((missing, "missing"), (empty, "empty (0 bytes)")):
        if files:
            more = f"\n  ... and {len(files) - shown} more" if len(files) > shown else ""
            problems.append(f"{len(files)} of {len(distinct)} {what} are {state}, e.g.\n  " + "\n  ".join(files[:shown]) + more)
    if problems:
        raise DatasetError("\n".join(problems))
    return len(distinct)


def read_data_root(data_root: str, reader):
    """`reader(path)` on `data_root` expanded (`spec.expand_data_root`: the documented variables
    only); a DatasetError names the root as written, so an expanded value never reaches a
    message or the results store."""
    from ..spec import expand_data_root

    expanded = expand_data_root(data_root)
    try:
        return reader(expanded)
    except DatasetError as error:
        message = str(error)
        if expanded != data_root:
            for shown in sorted({expanded, os.path.abspath(expanded)}, key=len, reverse=True):
                message = message.replace(shown, data_root)
        raise DatasetError(message) from None


# Decoded images larger than this are refused: PIL's own bomb limit (about 89 megapixels, an
# error only past twice that) lets a 13,000 x 13,000 file decode in full (500 MB as RGB). The
# benchmarks' largest photos are a few megapixels; a 48-megapixel phone photo passes.
MAX_DECODED_PIXELS = 64_000_000


def open_rgb(path, name: str | None = None):
    """An image file (a path or a file object; `name` in messages) decoded as RGB (PIL), refused
    (DatasetError) before decoding when its size exceeds MAX_DECODED_PIXELS."""
    from PIL import Image

    name = name or str(path)
    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_DECODED_PIXELS:
            raise DatasetError(
                f"image {name} is {width} x {height} pixels, more than {MAX_DECODED_PIXELS:,} decoded: "
                "refused (shrink it first, e.g. to 1024 pixels on its long side)"
            )
        return image.convert("RGB")
