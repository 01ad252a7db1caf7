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

Each reader is the dataset's registered reader (`@DATASETS.register`, called as `reader(root,
seed=...)` by `loading.read_root`); its `seed` is unused: these splits are the releases' own.

This module does not import torch (the photo transforms live beside the torch dataset).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dncml.trainers.data.base import (
    DatasetBundle,
    DatasetError,
    EvalSet,
    ImageSplit,
    bundle_image_paths,
    check_files_exist,
    pack_reader,
    require_dir,
    require_file,
    verified,
    verify_image_files,
)
from dncml.trainers.data.loading import read_root
from dncml.trainers.data.pack import SHARD_BYTES, is_pack, pack_bundle
from dncml.trainers.registry import DATASETS, DatasetInfo

__all__ = [
    "BENCHMARKS",
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


# Each dataset's Recall@K, test sets, layout and group labels are declared once, in the registry.
CUB, CARS, SOP, INSHOP, VEHICLEID = (DATASETS.info(name) for name in ("cub", "cars", "sop", "inshop", "vehicleid"))


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


@DATASETS.register("cub")
def read_cub(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
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
    bundle = DatasetBundle(name="cub", train=train, tests=[EvalSet("test", test, None, CUB.recall_ks)], recall_ks=CUB.recall_ks)
    return verified(bundle, verify_images)


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


@DATASETS.register("cars")
def read_cars(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
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
    bundle = DatasetBundle(name="cars", train=train, tests=[EvalSet("test", test, None, CARS.recall_ks)], recall_ks=CARS.recall_ks)
    return verified(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# Stanford Online Products


def _sop_group_name(rel_path: str) -> str:
    folder = rel_path.replace("\\", "/").split("/")[0]
    return folder[: -len("_final")] if folder.endswith("_final") else folder


@DATASETS.register("sop")
def read_sop(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
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
        tests=[EvalSet("test", splits["test"], None, SOP.recall_ks)],
        recall_ks=SOP.recall_ks,
        group_names=dict(sorted(group_names.items())),
    )
    return verified(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# In-shop Clothes Retrieval (DeepFashion)


def _inshop_item_id(token: str) -> int:
    return int(token[3:]) if token.lower().startswith("id_") else int(token)


_INSHOP_STATUS = ("train", "query", "gallery")


@DATASETS.register("inshop")
def read_inshop(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
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
        tests=[EvalSet("test", query, gallery, INSHOP.recall_ks)],
        recall_ks=INSHOP.recall_ks,
    )
    return verified(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# PKU VehicleID

# the declared test sets (small, medium, large) and their lists
VEHICLEID_TESTS = tuple(zip(VEHICLEID.test_sets, ("test_list_800.txt", "test_list_1600.txt", "test_list_2400.txt")))


@DATASETS.register("vehicleid")
def read_vehicleid(root: str | os.PathLike, verify_images: bool = False, seed: int = 0) -> DatasetBundle:
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
    tests = [EvalSet(name, load(fname, name), None, VEHICLEID.recall_ks) for name, fname in VEHICLEID_TESTS]
    bundle = DatasetBundle(name="vehicleid", train=train, tests=tests, recall_ks=VEHICLEID.recall_ks)
    return verified(bundle, verify_images)


# --------------------------------------------------------------------------------------------
# the datasets read from a root (the registry's declarations; folder.py reads the `folder` one)

BENCHMARKS: dict[str, DatasetInfo] = {name: DATASETS.info(name) for name in DATASETS.names() if DATASETS.info(name).needs_root}


def _info(name: str) -> DatasetInfo:
    key = str(name).lower()
    if key not in BENCHMARKS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]


def read_benchmark(name: str, root: str | os.PathLike, verify_images: bool = False) -> DatasetBundle:
    """Read benchmark `name` ("cub", "cars", "sop", "inshop", "vehicleid", "folder") from root:
    the unpacked archive, or a pack of it (`dncml datasets pack`, see `pack.py`)."""
    return read_root(_info(name).name, root, verify_images=verify_images)


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
    bundle = read_root(info.name, root_path)
    distinct = bundle_image_paths(bundle)
    try:
        if verify_images:
            verify_image_files(distinct, progress=progress, read=pack_reader(bundle))
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
