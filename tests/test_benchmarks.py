"""Readers for the five photo benchmarks, on tiny trees in the real on-disk layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dncml.trainers.data.base import DatasetBundle, DatasetError, ImageSplit
from dncml.trainers.data.benchmarks import (
    BENCHMARKS,
    bundle_image_paths,
    check_dataset,
    check_files_exist,
    read_benchmark,
    read_cars,
    read_cub,
    read_inshop,
    read_sop,
    read_vehicleid,
    verify_image_files,
)
from dncml.trainers.data.torch_dataset import photo_transforms


def _jpeg(path: Path, seed: int = 0, size=(12, 10)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")
    return str(path)


def _all_paths(bundle: DatasetBundle) -> list[str]:
    out = list(bundle.train.paths)
    for t in bundle.tests:
        out += t.query.paths + (t.gallery.paths if t.gallery is not None else [])
    return out


def _assert_paths_ok(bundle: DatasetBundle) -> None:
    for p in _all_paths(bundle):
        assert isinstance(p, str) and os.path.isabs(p) and os.path.isfile(p), p
    assert bundle.val is None
    assert bundle.train.labels.dtype == np.int64


# ---------------------------------------------------------------------------- CUB

CUB_CLASSES = (1, 2, 3, 101, 102, 103)


def make_cub(parent: Path, per_class: int = 2) -> Path:
    base = parent / "CUB_200_2011"
    images, labels = [], []
    image_id = 0
    for c in CUB_CLASSES:
        for j in range(per_class):
            image_id += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            _jpeg(base / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return base


def test_cub_reads_class_split(tmp_path):
    base = make_cub(tmp_path)
    for root in (base, tmp_path):  # the CUB_200_2011 folder or its parent
        b = read_cub(root)
        assert b.name == "cub" and b.recall_ks == (1, 2, 4, 8) and b.channels == 3
        assert sorted(set(b.train.labels.tolist())) == [1, 2, 3]
        assert len(b.train) == 6 and b.train.num_classes == 3
        assert len(b.tests) == 1
        t = b.tests[0]
        assert t.name == "test" and t.gallery is None and t.recall_ks == (1, 2, 4, 8)
        assert sorted(set(t.query.labels.tolist())) == [101, 102, 103] and len(t.query) == 6
        assert t.query.labels.dtype == np.int64
        assert not b.train.has_groups
        _assert_paths_ok(b)
        assert b.train.paths[0].endswith(os.path.join("images", "001.Bird_1", "Bird_1_0.jpg"))
    assert read_cub(base, verify_images=True).summary()["train"] == {"images": 6, "classes": 3}


def test_cub_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_cub(tmp_path / "nope")
    base = make_cub(tmp_path)
    labels = base / "image_class_labels.txt"
    text = labels.read_text()
    labels.write_text(text.replace("1 1\n", "1 one\n", 1))
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt, line 1: expected '<image_id> <class_id>'"):
        read_cub(base)
    labels.unlink()
    with pytest.raises(DatasetError, match="image_class_labels.txt"):
        read_cub(base)
    labels.write_text(text)
    bad = base / "images" / "001.Bird_1" / "Bird_1_1.jpg"
    bad.write_bytes(b"not a jpeg at all")
    read_cub(base)  # never decodes without verify_images
    with pytest.raises(DatasetError, match="Bird_1_1.jpg"):
        read_cub(base, verify_images=True)


# ---------------------------------------------------------------------------- Cars

CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
CARS_CLASSES = (1, 2, 98, 99, 150, 196)


def make_cars(root: Path, per_class: int = 2) -> Path:
    from scipy.io import savemat

    rows = []
    k = 0
    for c in CARS_CLASSES:
        for _ in range(per_class):
            k += 1
            rel = f"car_ims/{k:06d}.jpg"
            _jpeg(root / rel, k)
            rows.append((rel, c, k % 2))
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in CARS_FIELDS])
    for i, (rel, c, test) in enumerate(rows):
        ann[0, i] = (rel, np.uint8(1), np.uint8(2), np.uint8(9), np.uint8(8), np.uint8(c), np.uint8(test))
    class_names = np.array([f"Make Model {c}" for c in range(1, 197)], dtype=object)[None, :]
    savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": class_names})
    return root


def test_cars_mat_round_trips(tmp_path):
    from scipy.io import loadmat

    make_cars(tmp_path)
    ann = loadmat(tmp_path / "cars_annos.mat")["annotations"]
    assert ann.shape == (1, 12) and ann.dtype.names == CARS_FIELDS
    assert ann["relative_im_path"][0, 0][0] == "car_ims/000001.jpg"
    assert int(ann["class"][0, 11][0, 0]) == 196


def test_cars_reads_class_split(tmp_path):
    make_cars(tmp_path)
    b = read_cars(tmp_path, verify_images=True)
    assert b.name == "cars" and b.recall_ks == (1, 2, 4, 8)
    assert sorted(set(b.train.labels.tolist())) == [1, 2, 98] and len(b.train) == 6
    q = b.tests[0].query
    assert sorted(set(q.labels.tolist())) == [99, 150, 196] and len(q) == 6
    assert b.tests[0].gallery is None
    assert b.train.paths[0] == str(tmp_path / "car_ims" / "000001.jpg")
    _assert_paths_ok(b)


def test_cars_devkit_layout(tmp_path):
    from scipy.io import savemat

    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    for folder, mat, classes in (
        ("cars_train", "devkit/cars_train_annos.mat", (1, 99, 99)),
        ("cars_test", "cars_test_annos_withlabels.mat", (2, 98, 196)),
    ):
        ann = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
        for i, c in enumerate(classes):
            _jpeg(tmp_path / folder / f"{i + 1:05d}.jpg", i)
            ann[0, i] = (1, 2, 9, 8, np.uint8(c), f"{i + 1:05d}.jpg")
        (tmp_path / mat).parent.mkdir(exist_ok=True)
        savemat(tmp_path / mat, {"annotations": ann})
    b = read_cars(tmp_path)
    assert sorted(b.train.labels.tolist()) == [1, 2, 98]
    assert sorted(b.tests[0].query.labels.tolist()) == [99, 99, 196]
    _assert_paths_ok(b)
    assert BENCHMARKS["cars"].missing_files(tmp_path) == []


def test_cars_errors(tmp_path):
    with pytest.raises(DatasetError, match="cars_annos.mat"):
        read_cars(tmp_path)
    (tmp_path / "car_ims").mkdir()
    (tmp_path / "cars_annos.mat").write_bytes(b"garbage, not a MATLAB file")
    with pytest.raises(DatasetError, match="cars_annos.mat.*annotations"):
        read_cars(tmp_path)


# ---------------------------------------------------------------------------- SOP

SOP_HEADER = "image_id class_id super_class_id path"


def make_sop(root: Path) -> Path:
    # (class_id, super_class_id, folder): train classes 1..3, test classes 4..5
    train = [(1, 1, "bicycle_final"), (2, 1, "bicycle_final"), (3, 2, "coffee_maker_final")]
    test = [(4, 2, "coffee_maker_final"), (5, 3, "sofa_final")]
    image_id = 0
    for fname, classes in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines = [SOP_HEADER]
        for cls, sup, folder in classes:
            for j in range(2):
                image_id += 1
                rel = f"{folder}/{cls}_{j}.JPG"
                _jpeg(root / rel, image_id)
                lines.append(f"{image_id} {cls} {sup} {rel}")
        (root / fname).write_text("\n".join(lines) + "\n")
    return root


def test_sop_reads_groups(tmp_path):
    make_sop(tmp_path)
    b = read_sop(tmp_path)
    assert b.recall_ks == (1, 10, 100, 1000)
    assert b.train.labels.tolist() == [1, 1, 2, 2, 3, 3]
    assert b.train.groups.tolist() == [1, 1, 1, 1, 2, 2] and b.train.has_groups
    q = b.tests[0].query
    assert q.labels.tolist() == [4, 4, 5, 5] and q.groups.tolist() == [2, 2, 3, 3]
    assert b.group_names == {1: "bicycle", 2: "coffee_maker", 3: "sofa"}
    _assert_paths_ok(b)


def test_sop_errors(tmp_path):
    make_sop(tmp_path)
    f = tmp_path / "Ebay_test.txt"
    f.write_text(SOP_HEADER + "\n7 4 x coffee_maker_final/4_0.JPG\n")
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt, line 2: expected '<image_id> <class_id> <super_class_id> <path>'"):
        read_sop(tmp_path)
    f.unlink()
    with pytest.raises(DatasetError, match="Ebay_test.txt"):
        read_sop(tmp_path)


# ---------------------------------------------------------------------------- In-shop


def make_inshop(root: Path, under_eval: bool = False) -> Path:
    rows = []
    k = 0
    for item, statuses in (
        (1, ["train", "train"]),
        (2, ["train", "train"]),
        (3, ["query", "gallery", "gallery"]),
        (4, ["query", "query", "gallery"]),
    ):
        for j, st in enumerate(statuses):
            k += 1
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{j:02d}_1_front.jpg"
            _jpeg(root / rel, k)
            rows.append(f"{rel}    id_{item:08d} {st}")
    part = root / ("Eval" if under_eval else "") / "list_eval_partition.txt"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("under_eval", [False, True])
def test_inshop_query_gallery(tmp_path, under_eval):
    make_inshop(tmp_path, under_eval)
    b = read_inshop(tmp_path)
    assert b.recall_ks == (1, 10, 20, 30, 50)
    assert b.train.labels.tolist() == [1, 1, 2, 2]
    (t,) = b.tests
    assert t.query.name == "query" and t.gallery.name == "gallery"
    assert t.query.labels.tolist() == [3, 4, 4] and t.gallery.labels.tolist() == [3, 3, 4]
    assert t.recall_ks == (1, 10, 20, 30, 50) and len(t) == 6
    assert t.query.paths[0] == str(tmp_path / "img/WOMEN/Dresses/id_00000003/00_1_front.jpg")
    _assert_paths_ok(b)


def test_inshop_errors(tmp_path):
    make_inshop(tmp_path)
    part = tmp_path / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:3] + [lines[3].replace(" train", " validation")] + lines[4:]))
    with pytest.raises(DatasetError, match=r"line 4: expected '<image_name> <item_id> <evaluation_status>'"):
        read_inshop(tmp_path)
    part.write_text("\n".join(lines[:-1]))  # truncated: the count no longer matches
    with pytest.raises(DatasetError, match="declares 10 images but 9"):
        read_inshop(tmp_path)
    part.unlink()
    with pytest.raises(DatasetError, match="list_eval_partition.txt"):
        read_inshop(tmp_path)


# ---------------------------------------------------------------------------- VehicleID


def make_vehicleid(root: Path) -> Path:
    k = 0

    def write(fname: str, ids) -> None:
        nonlocal k
        lines = []
        for vid in ids:
            for _ in range(2):
                k += 1
                name = f"{k:07d}"
                _jpeg(root / "image" / f"{name}.jpg", k)
                lines.append(f"{name} {vid}")
        (root / "train_test_split").mkdir(parents=True, exist_ok=True)
        (root / "train_test_split" / fname).write_text("\n".join(lines) + "\n")

    write("train_list.txt", [1, 2, 3])
    write("test_list_800.txt", [10])
    write("test_list_1600.txt", [10, 11])
    write("test_list_2400.txt", [10, 11, 12])
    return root


def test_vehicleid_three_test_sets(tmp_path):
    make_vehicleid(tmp_path)
    b = read_vehicleid(tmp_path, verify_images=True)
    assert b.recall_ks == (1, 5)
    assert b.train.labels.tolist() == [1, 1, 2, 2, 3, 3]
    assert [t.name for t in b.tests] == ["test_small", "test_medium", "test_large"]
    assert [t.query.num_classes for t in b.tests] == [1, 2, 3]
    assert [len(t.query) for t in b.tests] == [2, 4, 6]
    assert all(t.gallery is None and t.recall_ks == (1, 5) for t in b.tests)
    assert b.train.paths[0] == str(tmp_path / "image" / "0000001.jpg")
    _assert_paths_ok(b)


def test_vehicleid_errors(tmp_path):
    make_vehicleid(tmp_path)
    (tmp_path / "train_test_split" / "test_list_1600.txt").unlink()
    with pytest.raises(DatasetError, match="test_list_1600.txt"):
        read_vehicleid(tmp_path)
    (tmp_path / "train_test_split" / "train_list.txt").write_text("0000001\n")
    with pytest.raises(DatasetError, match=r"train_list\.txt, line 1: expected 2 columns"):
        read_vehicleid(tmp_path)


# ---------------------------------------------------------------------------- registry / check


def test_registry_and_check_dataset(tmp_path):
    assert set(BENCHMARKS) == {"cub", "cars", "sop", "inshop", "vehicleid", "folder"}
    assert [n for n, i in BENCHMARKS.items() if i.has_groups] == ["sop"]
    assert BENCHMARKS["inshop"].recall_ks == (1, 10, 20, 30, 50)
    make_sop(tmp_path / "sop")
    info = BENCHMARKS["sop"]
    assert info.missing_files(tmp_path / "sop") == []
    assert info.missing_files(tmp_path) == ["Ebay_train.txt", "Ebay_test.txt"]
    report = check_dataset("sop", tmp_path / "sop", verify_images=True)
    assert report["splits"]["train"] == {"images": 6, "classes": 3}
    assert report["splits"]["test/query"] == {"images": 4, "classes": 2}
    assert report["images"] == 10 and report["num_groups"] == 2 and report["has_groups"]
    assert report["warnings"]  # a tiny copy differs from the full release's class counts
    assert read_benchmark("SOP", tmp_path / "sop").name == "sop"

    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; known: cars, cub, folder, inshop, sop, vehicleid"):
        check_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset("cub", tmp_path / "missing")
    os.remove(tmp_path / "sop" / "sofa_final" / "5_1.JPG")
    with pytest.raises(DatasetError, match=r"(?s)1 of 10 image files are missing.*5_1\.JPG"):
        check_dataset("sop", tmp_path / "sop")


def _truncate_jpeg(path: Path) -> None:
    """Rewrite path as a JPEG large enough that its first half holds the whole header and part of
    the scan data, then cut it to half its bytes: it still opens, but its pixels cannot decode."""
    _jpeg(path, 7, size=(96, 80))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # else PIL would pad the missing pixels silently
    with Image.open(path) as im:
        assert im.size == (96, 80)
        im.verify()  # the header-only check passes: the old verify_image_files let this through
    with Image.open(path) as im, pytest.raises(OSError, match="truncated"):
        im.load()


def test_truncated_jpeg_fails_only_the_full_decode(tmp_path):
    base = make_cub(tmp_path)
    bad = base / "images" / "102.Bird_102" / "Bird_102_1.jpg"  # a test-split image
    _truncate_jpeg(bad)
    paths = bundle_image_paths(read_cub(base))
    assert len(paths) == 12 and str(bad) in paths
    assert check_files_exist(paths) == 12  # it exists and is not empty
    assert check_dataset("cub", base)["images"] == 12
    message = r"(?s)1 of 12 image files cannot be decoded.*Bird_102_1\.jpg: OSError: image file is truncated"
    for workers in (1, 3):
        with pytest.raises(DatasetError, match=message):
            verify_image_files(paths + paths[:3], workers=workers)
    with pytest.raises(DatasetError, match=r"(?s)cub at .*CUB_200_2011: 1 of 12 image files cannot be decoded.*Bird_102_1\.jpg"):
        check_dataset("cub", base, verify_images=True)
    with pytest.raises(DatasetError, match="Bird_102_1.jpg"):
        read_cub(base, verify_images=True)


def test_missing_or_empty_image_fails_the_stat_check(tmp_path):
    base = make_cub(tmp_path)
    paths = bundle_image_paths(read_cub(base))
    gone = base / "images" / "003.Bird_3" / "Bird_3_0.jpg"
    gone.unlink()
    missing = r"(?s)1 of 12 image files are missing, e\.g\..*Bird_3_0\.jpg"
    with pytest.raises(DatasetError, match=missing):
        check_files_exist(paths)
    with pytest.raises(DatasetError, match=missing):
        check_dataset("cub", base)
    with pytest.raises(DatasetError, match=missing):  # found before any file is decoded
        verify_image_files(paths)
    with pytest.raises(DatasetError, match=missing):
        check_dataset("cub", base, verify_images=True)

    (base / "images" / "101.Bird_101" / "Bird_101_0.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"(?s)are missing.*Bird_3_0\.jpg.*1 of 12 image files are empty \(0 bytes\).*Bird_101_0\.jpg"):
        check_files_exist(paths)

    for p in paths[:8]:  # the empty one among them
        Path(p).unlink(missing_ok=True)
    with pytest.raises(DatasetError) as info:
        check_files_exist(paths)
    text = str(info.value)
    assert "8 of 12 image files are missing" in text and "... and 3 more" in text
    assert "are empty" not in text and text.count(".jpg") == 5  # the first five only


def test_intact_tree_passes_both_checks(tmp_path, capsys):
    base = make_cub(tmp_path)
    paths = bundle_image_paths(read_cub(base))
    assert check_files_exist(paths) == 12
    assert verify_image_files(paths, progress=True) == 12
    assert "decoding images" in capsys.readouterr().err
    assert verify_image_files(paths) == 12 and capsys.readouterr().err == ""
    for verify in (False, True):
        assert check_dataset("cub", base, verify_images=verify)["images"] == 12
    assert check_files_exist([]) == 0 and verify_image_files([]) == 0


# ---------------------------------------------------------------------------- torch side


def test_image_dataset_arrays_and_paths(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from dncml.trainers.data.torch_dataset import ImageDataset

    arrays = ImageSplit("glyphs", labels=[3, 4], images=np.array([np.zeros((6, 5)), np.full((6, 5), 255)], np.uint8))
    ds = ImageDataset(arrays)
    x, y, i = ds[1]
    assert x.shape == (1, 6, 5) and x.dtype == torch.float32 and y == 4 and i == 1
    assert float(x.min()) == 1.0 and float(ds[0][0].max()) == -1.0

    make_cub(tmp_path)
    b = read_cub(tmp_path)
    ds = ImageDataset(b.train, photo_transforms(train=False, image_size=32, resize=36))
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32
    assert yb.dtype == torch.int64 and yb.tolist() == [1, 1, 2, 2] and ib.tolist() == [0, 1, 2, 3]

    Path(b.train.paths[2]).write_bytes(b"\x00broken")
    with pytest.raises(DatasetError, match="Bird_2_0.jpg"):
        ds[2]


def test_photo_transforms_shapes():
    import torch

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for train in (True, False):
        out = photo_transforms(train, image_size=32, resize=36)(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert photo_transforms(False)(img).shape == (3, 224, 224)


@pytest.mark.parametrize("shape", [(50, 7, 6), (50, 7, 6, 3)], ids=["grayscale", "colour"])
def test_array_batches_equal_the_per_image_path(shape):
    """The batched gather of in-memory images gives exactly the tensors that the per-image
    dataset and the default collate give (so metrics cannot change with the faster path)."""
    import torch
    from torch.utils.data import DataLoader

    from dncml.trainers.data.torch_dataset import ArrayBatches, ImageDataset

    rng = np.random.default_rng(0)
    split = ImageSplit("arrays", labels=rng.integers(0, 9, shape[0]), images=rng.integers(0, 256, shape, dtype=np.uint8))
    batches = [rng.permutation(shape[0])[:16], np.arange(5), np.array([49, 0, 49])]
    reference = DataLoader(ImageDataset(split), batch_sampler=[b.tolist() for b in batches])
    for (x, y, i), (rx, ry, ri) in zip(ArrayBatches(split, batches), reference):
        assert torch.equal(x, rx) and torch.equal(y, ry) and torch.equal(i, ri)
    assert len(list(ArrayBatches(split, batches))) == 3
