"""Readers for the paper's five photo benchmarks: CUB-200-2011, Cars196, Stanford Online Products,
In-shop Clothes and PKU VehicleID.

Every reader takes the directory the public archive unpacks to and returns a `DatasetBundle` whose
splits hold absolute image paths (pixels are only read by `ImageDataset`, or here when
`verify_images=True`, which decodes every file completely). Labels are the dataset's own class ids
(int64, not remapped); `val` is left None (the trainer carves it from train with
`carve_validation`). Splits follow the DML protocol of the paper (Sanakoyeu et al., CVPR 2019,
Section 4, "Datasets", after Oh Song et al., CVPR 2016):

=========  ==============================================  ==========================
name       train / test                                    recall@K
=========  ==============================================  ==========================
cub        classes 1-100 / 101-200                         1, 2, 4, 8
cars       classes 1-98 / 99-196 (the `test` flag ignored) 1, 2, 4, 8
sop        Ebay_train.txt / Ebay_test.txt (groups = super) 1, 10, 100, 1000
inshop     status train / query against gallery            1, 10, 20, 30, 50
vehicleid  train_list / test_list_{800,1600,2400}          1, 5
=========  ==============================================  ==========================

Anything wrong on disk (missing directory or file, a malformed line, an undecodable image) raises
`DatasetError` naming the path and, for text files, the line and the expected format. Two checks
find bad image files before training: `check_files_exist` (stat only: missing or empty files, in
seconds; the preflight before any worker starts) and `verify_image_files` (decodes every pixel:
truncated or corrupt files too; slow, `dncml datasets check NAME --root DIR --verify-images`).

This module does not import torch (the photo transforms live beside the torch dataset).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dncml.trainers.data.base import (
    DatasetBundle,
    DatasetError,
    EvalSet,
    ImageSplit,
    check_files_exist,
    open_rgb,
    read_data_root,
    require_dir,
    require_file,
)
from dncml.trainers.data.folder import RECALL_KS as FOLDER_KS
from dncml.trainers.data.folder import read_folder
from dncml.trainers.data.pack import SHARD_BYTES, is_pack, pack_bundle, read_pack
from dncml.trainers.registry import DATASETS

__all__ = [
    "BENCHMARKS",
    "BenchmarkInfo",
    "bundle_image_paths",
    "check_dataset",
    "check_files_exist",
    "pack_dataset",
    "read_benchmark",
    "read_cars",
    "read_cub",
    "read_inshop",
    "read_sop",
    "read_vehicleid",
    "verify_image_files",
]


# Each dataset's Recall@K and group labels are declared once, in the registry.
CUB_KS = DATASETS.info("cub")["recall_ks"]
CARS_KS = DATASETS.info("cars")["recall_ks"]
SOP_KS = DATASETS.info("sop")["recall_ks"]
INSHOP_KS = DATASETS.info("inshop")["recall_ks"]
VEHICLEID_KS = DATASETS.info("vehicleid")["recall_ks"]


# --------------------------------------------------------------------------------------------
# helpers


def _root_dir(root: str | os.PathLike, what: str) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not path.exists():
        raise DatasetError(f"{what} root does not exist: {path}")
    return require_dir(path, f"{what} root directory")


def _to_int(token: str) -> int:
    return int(token)


def _parse_table(
    path: Path,
    fmt: str,
    converters: Sequence[Callable[[str], object]],
    header: Sequence[str] | None = None,
    skip_lines: int = 0,
) -> list[tuple]:
    """Parse a whitespace-separated text table, one row per non-blank line.

    fmt: the expected line format shown in error messages, e.g. "<image_id> <class_id>".
    converters: one per column (int, str, ...); any failure becomes a DatasetError naming the
    file, the line number, the expected format and the offending line.
    header: column names; the first data line is skipped if it equals them (case-insensitive).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc}); expected lines {fmt!r}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    rows: list[tuple] = []
    header_checked = header is None
    ncols = len(converters)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if lineno <= skip_lines:
            continue
        parts = line.split()
        if not parts:
            continue
        if not header_checked:
            header_checked = True
            if [p.lower() for p in parts] == [h.lower() for h in header]:
                continue
        if len(parts) != ncols:
            raise DatasetError(f"{path}, line {lineno}: expected {ncols} columns {fmt!r}, got {line.strip()!r}")
        try:
            rows.append(tuple(conv(tok) for conv, tok in zip(converters, parts)))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}, line {lineno}: expected {fmt!r}, got {line.strip()!r} ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: no data lines; expected lines {fmt!r}")
    return rows


def _make_split(name: str, paths: list[str], labels, groups=None, source: object = "") -> ImageSplit:
    if not paths:
        where = f" ({source})" if source else ""
        raise DatasetError(f"split {name!r} is empty{where}: no images fall in it")
    return ImageSplit(
        name=name,
        labels=np.asarray(labels, dtype=np.int64),
        paths=list(paths),
        groups=None if groups is None else np.asarray(groups, dtype=np.int64),
    )


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


def _finish(bundle: DatasetBundle, verify_images: bool) -> DatasetBundle:
    if verify_images:
        verify_image_files(_bundle_paths(bundle), read=_pack_reader(bundle))
    return bundle


def _pack_reader(bundle: DatasetBundle) -> Callable[[str], bytes] | None:
    return bundle.train.pack.read if bundle.train.pack is not None else None


def _split_by_class(
    paths: list[str], labels: np.ndarray, last_train_class: int, source: object, test_name: str = "test"
) -> tuple[ImageSplit, ImageSplit]:
    labels = np.asarray(labels, dtype=np.int64)
    is_train = labels <= last_train_class
    train = _make_split(
        "train", [p for p, t in zip(paths, is_train) if t], labels[is_train], source=f"classes 1-{last_train_class} of {source}"
    )
    test = _make_split(
        test_name, [p for p, t in zip(paths, is_train) if not t], labels[~is_train], source=f"classes above {last_train_class} of {source}"
    )
    return train, test


# --------------------------------------------------------------------------------------------
# CUB-200-2011


def _cub_dir(root: Path) -> Path:
    if (root / "images.txt").is_file():
        return root
    if (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    raise DatasetError(
        f"missing CUB image list: expected {root / 'images.txt'} (or {root / 'CUB_200_2011' / 'images.txt'}); unpack CUB_200_2011.tgz there"
    )


def read_cub(root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """CUB-200-2011: classes 1-100 train, 101-200 test; Recall@1,2,4,8.

    root: the `CUB_200_2011/` directory (holding images.txt, image_class_labels.txt, images/) or
    its parent.
    """
    base = _cub_dir(_root_dir(root, "CUB-200-2011"))
    images_txt = require_file(base / "images.txt", "CUB image list (images.txt)")
    labels_txt = require_file(base / "image_class_labels.txt", "CUB labels (image_class_labels.txt)")
    image_dir = require_dir(base / "images", "CUB image directory")
    image_rows = _parse_table(images_txt, "<image_id> <relative path>", [_to_int, str])
    label_rows = _parse_table(labels_txt, "<image_id> <class_id>", [_to_int, _to_int])
    label_of = dict(label_rows)
    if len(label_of) != len(label_rows):
        raise DatasetError(f"{labels_txt}: duplicate image ids")
    paths, labels = [], []
    for image_id, rel in image_rows:
        if image_id not in label_of:
            raise DatasetError(f"{labels_txt}: no class id for image {image_id} ({rel}) of {images_txt}")
        cls = label_of[image_id]
        if not 1 <= cls <= 200:
            raise DatasetError(f"{labels_txt}: class id {cls} of image {image_id} is outside 1..200")
        paths.append(str(image_dir / rel))
        labels.append(cls)
    train, test = _split_by_class(paths, np.array(labels), 100, labels_txt)
    bundle = DatasetBundle(name="cub", train=train, tests=[EvalSet("test", test, None, CUB_KS)], recall_ks=CUB_KS)
    return _finish(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# Stanford Cars (Cars196)


def _mat_annotations(path: Path, fields: Sequence[str]) -> dict[str, list]:
    """Load the `annotations` struct array of a Cars .mat file as {field: [value per image]}."""
    try:
        from scipy.io import loadmat

        mat = loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except NotImplementedError:
        raise DatasetError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; expected the MATLAB v5 file from the Stanford Cars release"
        ) from None
    except Exception as exc:
        raise DatasetError(
            f"{path}: cannot read as a MATLAB file ({type(exc).__name__}: {exc}); expected a "
            f"struct array 'annotations' with fields {list(fields)}"
        ) from None
    if "annotations" not in mat:
        raise DatasetError(f"{path}: no 'annotations' variable; expected a struct array with fields {list(fields)}")
    ann = np.atleast_1d(mat["annotations"])
    names = ann.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DatasetError(f"{path}: 'annotations' lacks fields {missing}; found {list(names)}, expected {list(fields)}")
    out: dict[str, list] = {}
    for f in fields:
        out[f] = [np.asarray(v).reshape(-1)[0] if np.size(v) else None for v in ann[f].reshape(-1)]
    return out


def _cars_class(value, path: Path, index: int) -> int:
    try:
        cls = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: annotation {index}: class {value!r} is not an integer") from None
    if not 1 <= cls <= 196:
        raise DatasetError(f"{path}: annotation {index}: class {cls} is outside 1..196")
    return cls


def _first_existing_dir(*candidates: Path) -> Path | None:
    for c in candidates:
        if c.is_dir():
            return c
    return None


def read_cars(root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """Stanford Cars: classes 1-98 train, 99-196 test (the release's `test` flag is ignored, as
    DML papers do); Recall@1,2,4,8.

    Layouts accepted under root:
    - `cars_annos.mat` + `car_ims/` (car_ims.tgz; paths in the .mat are "car_ims/000001.jpg");
    - the devkit layout: `devkit/cars_train_annos.mat` + `cars_train/` and
      `cars_test_annos_withlabels.mat` (at root or in devkit/) + `cars_test/`; both are merged.
    """
    root = _root_dir(root, "Stanford Cars")
    paths: list[str] = []
    labels: list[int] = []
    annos = root / "cars_annos.mat"
    if annos.is_file():
        require_dir(root / "car_ims", "Stanford Cars image directory (car_ims/, from car_ims.tgz)")
        fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
        ann = _mat_annotations(annos, fields)
        for i, (rel, cls) in enumerate(zip(ann["relative_im_path"], ann["class"])):
            if rel is None or not str(rel).strip():
                raise DatasetError(f"{annos}: annotation {i}: empty relative_im_path")
            paths.append(str(root / str(rel).strip()))
            labels.append(_cars_class(cls, annos, i))
    elif (root / "devkit" / "cars_train_annos.mat").is_file():
        test_annos = next(
            (p for p in (root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat") if p.is_file()),
            None,
        )
        if test_annos is None:
            raise DatasetError(
                f"missing Stanford Cars test labels: expected {root / 'cars_test_annos_withlabels.mat'} "
                f"(or in {root / 'devkit'}); the devkit's cars_test_annos.mat has no class labels"
            )
        fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        for annos_file, folder in ((root / "devkit" / "cars_train_annos.mat", "cars_train"), (test_annos, "cars_test")):
            image_dir = _first_existing_dir(root / folder, root / folder / folder)
            if image_dir is None:
                raise DatasetError(f"missing Stanford Cars image directory: expected {root / folder}")
            ann = _mat_annotations(annos_file, fields)
            for i, (fname, cls) in enumerate(zip(ann["fname"], ann["class"])):
                if fname is None or not str(fname).strip():
                    raise DatasetError(f"{annos_file}: annotation {i}: empty fname")
                paths.append(str(image_dir / str(fname).strip()))
                labels.append(_cars_class(cls, annos_file, i))
    else:
        raise DatasetError(
            f"missing Stanford Cars annotations: expected {annos} (with car_ims/), or the devkit "
            f"layout {root / 'devkit' / 'cars_train_annos.mat'} + cars_train/ + "
            f"cars_test_annos_withlabels.mat + cars_test/"
        )
    if not paths:
        raise DatasetError(f"Stanford Cars under {root}: the annotations list no images")
    train, test = _split_by_class(paths, np.array(labels), 98, root)
    bundle = DatasetBundle(name="cars", train=train, tests=[EvalSet("test", test, None, CARS_KS)], recall_ks=CARS_KS)
    return _finish(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# Stanford Online Products


def _sop_group_name(rel_path: str) -> str:
    folder = rel_path.replace("\\", "/").split("/")[0]
    return folder[: -len("_final")] if folder.endswith("_final") else folder


def read_sop(root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """Stanford Online Products: Ebay_train.txt (11,318 classes) / Ebay_test.txt (11,316);
    Recall@1,10,100,1000. groups = super_class_id (1..12), group_names from the folder names
    ("bicycle_final/..." -> "bicycle").

    root: the `Stanford_Online_Products/` directory.
    """
    root = _root_dir(root, "Stanford Online Products")
    fmt = "<image_id> <class_id> <super_class_id> <path>"
    header = ("image_id", "class_id", "super_class_id", "path")
    group_names: dict[int, str] = {}
    splits = {}
    for name, fname in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        f = require_file(root / fname, f"SOP {name} list ({fname})")
        rows = _parse_table(f, fmt, [_to_int, _to_int, _to_int, str], header=header)
        paths, labels, groups = [], [], []
        for _image_id, cls, sup, rel in rows:
            paths.append(str(root / rel))
            labels.append(cls)
            groups.append(sup)
            group_names.setdefault(sup, _sop_group_name(rel))
        splits[name] = _make_split(name, paths, labels, groups, source=f)
    bundle = DatasetBundle(
        name="sop",
        train=splits["train"],
        tests=[EvalSet("test", splits["test"], None, SOP_KS)],
        recall_ks=SOP_KS,
        group_names=dict(sorted(group_names.items())),
    )
    return _finish(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# In-shop Clothes Retrieval (DeepFashion)


def _inshop_item_id(token: str) -> int:
    return int(token[3:]) if token.lower().startswith("id_") else int(token)


_INSHOP_STATUS = ("train", "query", "gallery")


def read_inshop(root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """In-shop Clothes: status train (3,997 items) / query (14,218) against gallery (12,612);
    Recall@1,10,20,30,50. Labels are the item ids ("id_00000001" -> 1).

    root: the folder holding `list_eval_partition.txt` (or `Eval/list_eval_partition.txt`) and
    the unpacked `img/` (Img/img.zip; `Img/img/` is accepted too). Image names in the list start
    with "img/".
    """
    root = _root_dir(root, "In-shop Clothes")
    part = next(
        (p for p in (root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt") if p.is_file()),
        None,
    )
    if part is None:
        raise DatasetError(
            f"missing In-shop partition list: expected {root / 'list_eval_partition.txt'} (or {root / 'Eval' / 'list_eval_partition.txt'})"
        )
    image_base = next((b for b in (root, root / "Img") if (b / "img").is_dir()), None)
    if image_base is None:
        raise DatasetError(f"missing In-shop image directory: expected {root / 'img'} (unpack Img/img.zip there)")
    fmt = "<image_name> <item_id> <evaluation_status>"
    # line 1: the image count; line 2: the header
    try:
        first = part.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {part}: {exc}") from None
    try:
        declared = int(first)
    except ValueError:
        raise DatasetError(
            f"{part}, line 1: expected the image count, got {first!r}; the file should start with "
            f"the count, then the header 'image_name item_id evaluation_status', then {fmt!r} rows"
        ) from None

    def status(tok: str) -> str:
        if tok not in _INSHOP_STATUS:
            raise ValueError(f"status must be one of {_INSHOP_STATUS}")
        return tok

    rows = _parse_table(part, fmt, [str, _inshop_item_id, status], header=("image_name", "item_id", "evaluation_status"), skip_lines=1)
    if len(rows) != declared:
        raise DatasetError(f"{part}: line 1 declares {declared} images but {len(rows)} rows follow (truncated file?)")
    by_status: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in _INSHOP_STATUS}
    for rel, item, st in rows:
        by_status[st][0].append(str(image_base / rel))
        by_status[st][1].append(item)
    train, query, gallery = (_make_split(s, *by_status[s], source=part) for s in _INSHOP_STATUS)
    bundle = DatasetBundle(
        name="inshop",
        train=train,
        tests=[EvalSet("test", query, gallery, INSHOP_KS)],
        recall_ks=INSHOP_KS,
    )
    return _finish(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# PKU VehicleID

VEHICLEID_TESTS = (
    ("test_small", "test_list_800.txt"),
    ("test_medium", "test_list_1600.txt"),
    ("test_large", "test_list_2400.txt"),
)


def read_vehicleid(root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """PKU VehicleID: train_list.txt / test_list_{800,1600,2400}.txt as test_small / test_medium /
    test_large (every query against the rest of its list); Recall@1,5.

    root: the `VehicleID_V1.0/` directory (image/, train_test_split/).
    """
    root = _root_dir(root, "VehicleID")
    image_dir = require_dir(root / "image", "VehicleID image directory")
    split_dir = require_dir(root / "train_test_split", "VehicleID split directory (train_test_split/)")
    fmt = "<image_name> <vehicle_id>"

    def load(fname: str, name: str) -> ImageSplit:
        f = require_file(split_dir / fname, f"VehicleID list ({fname})")
        rows = _parse_table(f, fmt, [str, _to_int])
        return _make_split(name, [str(image_dir / f"{n}.jpg") for n, _ in rows], [v for _, v in rows], source=f)

    train = load("train_list.txt", "train")
    tests = [EvalSet(name, load(fname, name), None, VEHICLEID_KS) for name, fname in VEHICLEID_TESTS]
    bundle = DatasetBundle(name="vehicleid", train=train, tests=tests, recall_ks=VEHICLEID_KS)
    return _finish(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class BenchmarkInfo:
    """What `dncml datasets list` / `check` show about one benchmark.

    required_files: paths relative to the dataset root that the main layout needs (folders end
    with "/"); alt_layouts: other accepted layouts, each a tuple of the same kind.
    expected_classes: class counts of the full public release per `DatasetBundle.summary()` row
    ("train", "test/query", ...), used only for warnings in `check_dataset`.
    """

    name: str
    reader: Callable[..., DatasetBundle]
    title: str
    archive: str
    homepage: str
    required_files: tuple[str, ...]
    recall_ks: tuple[int, ...]
    alt_layouts: tuple[tuple[str, ...], ...] = ()
    expected_classes: dict[str, int] = field(default_factory=dict)

    @property
    def has_groups(self) -> bool:
        return DATASETS.info(self.name)["groups"]

    def layouts(self) -> tuple[tuple[str, ...], ...]:
        return (self.required_files,) + self.alt_layouts

    def missing_files(self, root: str | os.PathLike) -> list[str]:
        """[] if some accepted layout is complete under root, else the main layout's missing paths."""
        base = Path(os.path.expanduser(os.fspath(root)))

        def missing(layout: tuple[str, ...]) -> list[str]:
            out = []
            for rel in layout:
                p = base / rel.rstrip("/")
                ok = p.is_dir() if rel.endswith("/") else p.is_file()
                if not ok:
                    out.append(rel)
            return out

        results = [missing(layout) for layout in self.layouts()]
        if any(not m for m in results):
            return []
        return results[0]


BENCHMARKS: dict[str, BenchmarkInfo] = {
    "cub": BenchmarkInfo(
        name="cub",
        reader=read_cub,
        title="CUB-200-2011 (birds, 200 classes)",
        archive="CUB_200_2011.tgz -> CUB_200_2011/ (pass that folder or its parent)",
        homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
        required_files=("images.txt", "image_class_labels.txt", "images/"),
        alt_layouts=(("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/images/"),),
        recall_ks=CUB_KS,
        expected_classes={"train": 100, "test/query": 100},
    ),
    "cars": BenchmarkInfo(
        name="cars",
        reader=read_cars,
        title="Stanford Cars / Cars196 (196 car models)",
        archive="car_ims.tgz -> car_ims/, plus cars_annos.mat next to it "
        "(or the devkit layout: devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat)",
        homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        required_files=("cars_annos.mat", "car_ims/"),
        alt_layouts=(
            ("devkit/cars_train_annos.mat", "cars_train/", "cars_test_annos_withlabels.mat", "cars_test/"),
            ("devkit/cars_train_annos.mat", "cars_train/", "devkit/cars_test_annos_withlabels.mat", "cars_test/"),
        ),
        recall_ks=CARS_KS,
        expected_classes={"train": 98, "test/query": 98},
    ),
    "sop": BenchmarkInfo(
        name="sop",
        reader=read_sop,
        title="Stanford Online Products (22,634 products in 12 super-classes)",
        archive="Stanford_Online_Products.zip -> Stanford_Online_Products/",
        homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
        required_files=("Ebay_train.txt", "Ebay_test.txt"),
        recall_ks=SOP_KS,
        expected_classes={"train": 11318, "test/query": 11316},
    ),
    "inshop": BenchmarkInfo(
        name="inshop",
        reader=read_inshop,
        title="DeepFashion In-shop Clothes Retrieval (7,982 items)",
        archive="In-shop Clothes Retrieval Benchmark: Img/img.zip -> img/, plus "
        "Eval/list_eval_partition.txt (either at the root or under Eval/)",
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
        required_files=("list_eval_partition.txt", "img/"),
        alt_layouts=(
            ("Eval/list_eval_partition.txt", "img/"),
            ("Eval/list_eval_partition.txt", "Img/img/"),
            ("list_eval_partition.txt", "Img/img/"),
        ),
        recall_ks=INSHOP_KS,
        expected_classes={"train": 3997, "test/query": 3985, "test/gallery": 3985},
    ),
    "vehicleid": BenchmarkInfo(
        name="vehicleid",
        reader=read_vehicleid,
        title="PKU VehicleID (26,267 vehicles)",
        archive="VehicleID_V1.0 (on request from PKU) -> VehicleID_V1.0/ with image/ and train_test_split/",
        homepage="https://www.pkuml.org/resources/pku-vehicleid.html",
        required_files=(
            "image/",
            "train_test_split/train_list.txt",
            "train_test_split/test_list_800.txt",
            "train_test_split/test_list_1600.txt",
            "train_test_split/test_list_2400.txt",
        ),
        recall_ks=VEHICLEID_KS,
        expected_classes={"test_small/query": 800, "test_medium/query": 1600, "test_large/query": 2400},
    ),
}


BENCHMARKS["folder"] = BenchmarkInfo(
    name="folder",
    reader=read_folder,
    title="Your own images: ROOT/<class name>/<images> (class-disjoint train / test)",
    archive="any folder with one sub-folder of .jpg / .png images per class (optional ROOT/split.txt)",
    homepage="",
    required_files=(),
    recall_ks=FOLDER_KS,
)


def _register(name: str) -> None:
    @DATASETS.register(name)
    def load_for_spec(spec, progress: bool = True, cache_dir: Path | None = None) -> DatasetBundle:
        return read_data_root(spec.data_root, lambda root: read_benchmark(name, root))


for _name in ("cub", "cars", "sop", "inshop", "vehicleid"):
    _register(_name)


def _info(name: str) -> BenchmarkInfo:
    key = str(name).lower()
    if key not in BENCHMARKS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]


def read_benchmark(name: str, root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """Read benchmark `name` ("cub", "cars", "sop", "inshop", "vehicleid") from root: the
    unpacked archive, or a pack of it (`dncml datasets pack`, see `pack.py`)."""
    info = _info(name)
    if is_pack(root):
        return _finish(read_pack(root, expected=info.name), verify_images)
    return info.reader(root, verify_images=verify_images)


def pack_dataset(
    name: str, root: str | os.PathLike, out: str | os.PathLike, shard_bytes: int = SHARD_BYTES, progress: bool = False
) -> dict:
    """Pack benchmark `name` read from root (its unpacked archive) into out (`dncml datasets pack`)."""
    info = _info(name)
    if is_pack(root):
        raise DatasetError(f"{root} is already a pack")
    root_path = _root_dir(root, info.title)
    return pack_bundle(info.reader(root_path), root_path, out, shard_bytes=shard_bytes, progress=progress)


def check_dataset(
    name: str,
    root: str | os.PathLike,
    verify_images: bool = False,
    progress: bool = False,
) -> dict:
    """Read a benchmark and report what it holds (for `dncml datasets check`).

    Raises DatasetError for an unknown name (listing the known ones), a missing root, missing
    list/label files, malformed lines, missing or empty image files (always: every listed path
    is stat'ed by `check_files_exist`; the message gives how many and names the first few) and,
    with verify_images, images PIL cannot decode completely (`verify_image_files`: slow, every
    file is decoded; progress shows a tqdm bar).

    Returns {"name", "title", "root", "recall_ks", "has_groups", "num_groups", "group_names",
    "images" (distinct image files), "splits": {row: {"images", "classes"}}, "warnings": [...]};
    warnings note class counts that differ from the full public release (e.g. a partial copy).
    """
    info = _info(name)
    root_path = _root_dir(root, info.title)
    packed = is_pack(root_path)
    bundle = read_pack(root_path, expected=info.name) if packed else info.reader(root_path, verify_images=False)
    distinct = bundle_image_paths(bundle)
    try:
        if verify_images:
            verify_image_files(distinct, progress=progress, read=_pack_reader(bundle))
        elif not packed:  # a pack's shards and index were checked when it opened
            check_files_exist(distinct)
    except DatasetError as exc:
        raise DatasetError(f"{info.name} at {root_path}: {exc}") from None
    splits = bundle.summary()
    warnings = [
        f"{row}: {splits[row]['classes']} classes, the full release has {n}"
        for row, n in info.expected_classes.items()
        if row in splits and splits[row]["classes"] != n
    ] + list(bundle.notes)
    groups = np.unique(bundle.train.groups[bundle.train.groups >= 0])
    return {
        "name": info.name,
        "title": info.title,
        "root": str(root_path),
        "recall_ks": list(bundle.recall_ks),
        "has_groups": bundle.train.has_groups,
        "num_groups": int(len(groups)),
        "group_names": dict(bundle.group_names),
        "images": len(distinct),
        "packed": packed,
        "splits": splits,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------
# transforms
