"""Dataset containers shared by every reader: what a split is, what an evaluation set is; and
what every reader checks with them: data roots, files, image files.

A reader (glyphs, CUB, Cars, ...) turns files on disk into a `DatasetBundle`; the trainer only
ever sees these types, so every dataset trains and evaluates through the same code.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
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
    with `verify_image_files` for that). The message gives how many files are missing
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


def _decode_error(path: str, read: Callable[[str], bytes] | None = None) -> str | None:
    """None if PIL decodes every pixel of path as `ImageDataset` does (open, convert to RGB),
    else "<ErrorType>: <message>". Never tolerates truncation (ImageFile.LOAD_TRUNCATED_IMAGES
    is left as it is, False unless a caller sets it). read: where the bytes come from (a pack's
    `read`); None: the file at path."""
    import io

    try:
        open_rgb(path if read is None else io.BytesIO(read(path)), name=path)
    except DatasetError as exc:  # too large to decode
        return str(exc)
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_image_files(
    paths: Sequence[str],
    progress: bool = False,
    workers: int | None = None,
    shown: int = 5,
    read: Callable[[str], bytes] | None = None,
) -> int:
    """Decode every distinct image completely; DatasetError naming the files PIL cannot decode.

    First `check_files_exist` (missing or empty files fail at once, before any decoding); then
    each file is opened and converted to RGB like `ImageDataset` does, so a truncated or corrupt
    file fails here rather than mid-epoch (`Image.verify` alone would pass a truncated JPEG: it
    does not decode the pixel data). No transforms are applied. Files are decoded by `workers`
    threads (PIL releases the GIL while decoding; default min(8, CPU count)); `progress` shows a
    tqdm bar on stderr. Every file is decoded before failing, so the error gives how many are
    bad and names the first `shown` (in list order) with PIL's error for each.

    read: where the bytes come from (a pack's `read`, which checked its shards when it opened);
    None: the files themselves.

    Returns the number of distinct files checked.
    """
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from tqdm import tqdm

    distinct = list(dict.fromkeys(paths))
    if read is None:
        check_files_exist(distinct)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    bad: list[str] = []
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
    try:
        results = tqdm(
            pool.map(partial(_decode_error, read=read), distinct),
            total=len(distinct),
            desc="decoding images",
            unit="img",
            file=sys.stderr,
            disable=not progress,
        )
        for path, error in zip(distinct, results):
            if error is not None:
                bad.append(f"{path}: {error}")
    finally:  # on Ctrl-C, drop the files not started yet instead of decoding them all first
        pool.shutdown(wait=True, cancel_futures=True)
    if bad:
        more = f"\n  ... and {len(bad) - shown} more" if len(bad) > shown else ""
        raise DatasetError(f"{len(bad)} of {len(distinct)} image files cannot be decoded, e.g.\n  " + "\n  ".join(bad[:shown]) + more)
    return len(distinct)


def verified(bundle: DatasetBundle, verify_images: bool) -> DatasetBundle:
    """The bundle, once every image file it lists decodes (`verify_image_files`) when verify_images."""
    if verify_images:
        verify_image_files(_bundle_paths(bundle), read=pack_reader(bundle))
    return bundle


def bundle_image_paths(bundle: DatasetBundle) -> list[str]:
    """The distinct image files a bundle's train, test and validation splits list (first-seen order; [] for
    in-memory datasets such as glyphs)."""
    return list(dict.fromkeys(_bundle_paths(bundle)))


def _bundle_paths(bundle: DatasetBundle) -> list[str]:
    paths = list(bundle.train.paths or [])
    for test in [*bundle.tests, *([bundle.val] if bundle.val is not None else [])]:
        paths.extend(test.query.paths or [])
        if test.gallery is not None:
            paths.extend(test.gallery.paths or [])
    return paths


def pack_reader(bundle: DatasetBundle) -> Callable[[str], bytes] | None:
    """Where a packed bundle's image bytes come from (its pack's `read`); None for files on disk."""
    return bundle.train.pack.read if bundle.train.pack is not None else None


# The environment variables `data_root` may name (`${DNCML_DATA}/cub`, `~` for HOME): no other
# one is expanded, so a spec cannot pull a secret into a path, an error message or the store.
DATA_ROOT_VARIABLES = ("DNCML_DATA", "HOME")
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def data_root_variables(value: str) -> list[str]:
    """The variables `value` names, in order."""
    return [braced if braced is not None else bare for braced, bare in _VARIABLE.findall(value)]


def expand_data_root(value: str) -> str:
    """`data_root` with `~` and the documented variables expanded (the others stay as written;
    `spec.validate` refuses them)."""

    def substitute(match: re.Match) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        return os.environ.get(name, match.group(0)) if name in DATA_ROOT_VARIABLES else match.group(0)

    return os.path.expanduser(_VARIABLE.sub(substitute, value))


def read_data_root(data_root: str, reader):
    """`reader(path)` on `data_root` expanded (`expand_data_root`: the documented variables
    only); a DatasetError names the root as written, so an expanded value never reaches a
    message or the results store."""
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
