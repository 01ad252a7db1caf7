"""The embedded glyphs dataset (small configs only) and the preview grid."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dncml.trainers.data import glyphs
from dncml.trainers.data.base import DatasetBundle, DatasetError, ImageSplit, carve_validation
from dncml.trainers.data.glyphs import (
    GLYPH_RECALL_KS,
    GlyphConfig,
    glyph_code_points,
    load_glyphs,
    prepare_glyphs,
    render_glyphs,
)
from dncml.trainers.data.preview import save_grid

SMALL = GlyphConfig(num_classes=24, instances_per_class=24, image_size=32, seed=0)


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return render_glyphs(SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != "timing.json"}


# ------------------------------------------------------------------------ code points, groups


def test_code_points_and_groups():
    cps = glyph_code_points()
    assert cps == sorted(cps) and len(set(cps)) == len(cps)
    assert 1900 <= len(cps) <= 2400
    assert {ord(c) for c in "Aa09ΩЖԱა→∑─█"} <= set(cps)
    assert all(unicodedata.category(chr(cp))[0] in "LNS" for cp in cps)
    names = glyphs.glyph_group_names()
    assert 8 <= len(names) <= 20 and sorted(names) == list(range(len(names)))
    sizes = np.bincount([glyphs.glyph_group_of(cp) for cp in cps], minlength=len(names))
    assert sizes.min() >= glyphs.MIN_GROUP_SIZE
    assert names[glyphs.glyph_group_of(ord("A"))] == "Latin"
    assert names[glyphs.glyph_group_of(ord("Ж"))] == "Cyrillic"
    assert names[glyphs.glyph_group_of(ord("→"))] == "arrows"
    assert names[glyphs.glyph_group_of(ord("─"))] == "box drawing"


# ---------------------------------------------------------------------------- render arrays


def test_shapes_dtypes_ranges(small):
    c, k = 24, SMALL.instances_per_class
    assert small["images"].shape == (c * k, 32, 32) and small["images"].dtype == np.uint8
    for name, shape, dtype in [
        ("labels", (c * k,), np.int64),
        ("groups", (c * k,), np.int64),
        ("faces", (c * k,), np.int8),
        ("code_points", (c,), np.int64),
        ("class_groups", (c,), np.int64),
        ("split", (c,), np.int8),
    ]:
        assert small[name].shape == shape and small[name].dtype == dtype, name
    assert np.array_equal(np.bincount(small["labels"]), np.full(c, k))
    assert np.array_equal(small["groups"], small["class_groups"][small["labels"]])
    assert np.array_equal(np.bincount(small["faces"]), np.full(12, c * 2))
    assert set(small["code_points"].tolist()) <= set(glyph_code_points())
    assert np.all(np.diff(small["code_points"]) > 0)
    per_image = small["images"].reshape(len(small["images"]), -1)
    assert per_image.max(axis=1).min() > 100  # every image has ink
    clean = small["images"].reshape(c, 12, 2, 32, 32)[:, :, 0]
    # white glyph on black: the glyph box fits inside a 2-px margin (resampling may bleed a little)
    assert max(clean[:, :, 0, :].max(), clean[:, :, -1, :].max(), clean[:, :, :, 0].max()) < 32
    assert np.median(small["images"]) < 20
    assert set(np.unique(small["split"]).tolist()) == {0, 1}


def test_other_image_size():
    arrays = render_glyphs(GlyphConfig(num_classes=8, instances_per_class=12, image_size=16))
    assert arrays["images"].shape == (8 * 12, 16, 16)


def test_render_is_deterministic(small):
    again = render_glyphs(SMALL)
    assert sorted(again) == sorted(small)
    for name in small:
        assert again[name].dtype == small[name].dtype
        assert np.array_equal(again[name], small[name]), name


def test_seed_changes_augmentation_not_the_clean_render():
    faces = glyphs._faces(64)
    a = glyphs._render_class(ord("A"), faces, GlyphConfig(instances_per_class=24, seed=0))
    b = glyphs._render_class(ord("A"), faces, GlyphConfig(instances_per_class=24, seed=1))
    a, b = a.reshape(12, 2, 32, 32), b.reshape(12, 2, 32, 32)
    assert np.array_equal(a[:, 0], b[:, 0])  # instance 0 of every face is the clean render
    for face in range(12):
        assert not np.array_equal(a[face, 1], b[face, 1])
    assert not np.array_equal(a[:, 0], a[:, 1])


def test_class_images_do_not_depend_on_the_subset(small):
    bigger = render_glyphs(GlyphConfig(num_classes=48, instances_per_class=24, seed=0))
    common = np.intersect1d(small["code_points"], bigger["code_points"])
    assert len(common) >= 4
    for cp in common:
        i = int(np.flatnonzero(small["code_points"] == cp)[0])
        j = int(np.flatnonzero(bigger["code_points"] == cp)[0])
        assert np.array_equal(small["images"][small["labels"] == i], bigger["images"][bigger["labels"] == j])


# ------------------------------------------------------------------------------------- split


@pytest.mark.parametrize("num_classes", [8, 9, 24, 33, 49, None])
def test_split_is_class_disjoint_and_spans_groups(num_classes):
    cps, groups, split = glyphs.select_classes(GlyphConfig(num_classes=num_classes))
    total = len(glyph_code_points()) if num_classes is None else num_classes
    assert len(cps) == len(set(cps.tolist())) == total
    train, test = set(cps[split == 0].tolist()), set(cps[split == 1].tolist())
    assert not train & test and train | test == set(cps.tolist())
    assert set(groups[split == 0].tolist()) == set(groups[split == 1].tolist()) == set(groups.tolist())
    assert abs(len(train) - len(test)) <= 1
    if num_classes is None or num_classes >= 2 * len(glyphs.glyph_group_names()):
        assert set(groups.tolist()) == set(glyphs.glyph_group_names())


def test_subset_is_stratified_and_seeded():
    a = glyphs.select_classes(GlyphConfig(num_classes=200, seed=0))
    b = glyphs.select_classes(GlyphConfig(num_classes=200, seed=0))
    c = glyphs.select_classes(GlyphConfig(num_classes=200, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    full_groups = np.array([glyphs.glyph_group_of(cp) for cp in glyph_code_points()])
    expected = np.bincount(full_groups) * 200 / len(full_groups)
    got = np.bincount(a[1], minlength=len(expected))
    assert np.all(np.abs(got - expected) <= 2)


def test_loaded_bundle(tmp_path, small):
    bundle = load_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    assert isinstance(bundle, DatasetBundle)
    assert bundle.name == "glyphs" and bundle.channels == 1 and bundle.val is None
    assert bundle.recall_ks == GLYPH_RECALL_KS == (1, 2, 4, 8)
    (test,) = bundle.tests
    assert test.name == "test" and test.gallery is None and test.recall_ks == GLYPH_RECALL_KS
    train_labels, test_labels = set(bundle.train.labels.tolist()), set(test.query.labels.tolist())
    assert not train_labels & test_labels and len(train_labels | test_labels) == 24
    assert len(bundle.train) + len(test.query) == 24 * 24
    assert bundle.train.images.shape[1:] == (32, 32)
    assert set(bundle.train.groups.tolist()) == set(test.query.groups.tolist())
    assert set(bundle.train.groups.tolist()) <= set(bundle.group_names)
    assert np.array_equal(np.sort(np.concatenate([bundle.train.images, test.query.images]).ravel()), np.sort(small["images"].ravel()))
    rest, val = carve_validation(bundle.train, 0.25, seed=0)
    assert len(val) > 0 and not set(val.labels.tolist()) & set(rest.labels.tolist())


# ------------------------------------------------------------------------------------- cache


def test_prepare_is_byte_identical(tmp_path):
    a = prepare_glyphs(SMALL, cache_dir=tmp_path / "a", progress=False)
    b = prepare_glyphs(SMALL, cache_dir=tmp_path / "b", progress=False)
    assert a.name == b.name == SMALL.key and a.parent.name == "glyphs"
    files_a, files_b = _files(a), _files(b)
    assert set(files_a) == {f"{n}.npy" for n in glyphs.ARRAY_NAMES} | {"meta.json"}
    assert files_a == files_b
    meta = json.loads(files_a["meta.json"])
    assert meta["counts"]["classes"] == 24 and meta["counts"]["images"] == 24 * 24
    assert meta["faces"] == list(glyphs.GLYPH_FACES) and len(meta["faces"]) == 12
    assert sorted(p.name for p in a.iterdir()) == sorted(files_a)  # nothing else, nothing that varies


def test_cache_is_reused(tmp_path, monkeypatch):
    path = prepare_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def boom(*args, **kwargs):
        raise AssertionError("re-rendered a cached config")

    monkeypatch.setattr(glyphs, "render_glyphs", boom)
    assert prepare_glyphs(SMALL, cache_dir=tmp_path, progress=False) == path
    bundle = load_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    assert len(bundle.train) + len(bundle.tests[0].query) == 24 * 24
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == [SMALL.key]


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DNCML_CACHE", str(tmp_path / "env"))
    path = prepare_glyphs(GlyphConfig(num_classes=8, instances_per_class=12), progress=False)
    assert path == tmp_path / "env" / "glyphs" / GlyphConfig(num_classes=8, instances_per_class=12).key


def test_crash_mid_render_leaves_nothing(tmp_path, monkeypatch):
    real = glyphs._render_class
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(glyphs, "_render_class", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    root = tmp_path / "glyphs"
    assert not (root / SMALL.key).exists()
    assert list(root.iterdir()) == []  # the temporary directory is gone too


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"instances_per_class": 13}, "instances_per_class"),
        ({"instances_per_class": 0}, "instances_per_class"),
        ({"instances_per_class": 6}, "instances_per_class"),
        ({"image_size": 15}, "image_size"),
        ({"image_size": 129}, "image_size"),
        ({"num_classes": 7}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GlyphConfig(**kwargs)


def test_too_many_classes(tmp_path):
    config = GlyphConfig(num_classes=10**6)
    for call in (lambda: render_glyphs(config), lambda: prepare_glyphs(config, tmp_path, progress=False)):
        with pytest.raises(ValueError, match="num_classes"):
            call()
    assert not (tmp_path / "glyphs" / config.key).exists()


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage_meta"])
def test_corrupted_cache(tmp_path, damage):
    path = prepare_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    if damage == "truncate":
        bad = path / "images.npy"
        bad.write_bytes(bad.read_bytes()[:1000])
    elif damage == "delete":
        bad = path / "labels.npy"
        bad.unlink()
    else:
        bad = path / "meta.json"
        bad.write_text("{not json")
    with pytest.raises(DatasetError) as info:
        load_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    assert str(bad) in str(info.value) and "delete" in str(info.value)


def test_wrong_shape_in_cache(tmp_path):
    path = prepare_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    np.save(path / "split.npy", np.zeros(3, dtype=np.int8))
    with pytest.raises(DatasetError, match="split.npy"):
        load_glyphs(SMALL, cache_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------------- preview


def _check_png(path: Path, min_size=(100, 100)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= min_size[0] and img.height >= min_size[1]


def test_save_grid_arrays(tmp_path, small):
    split = ImageSplit(name="train", labels=small["labels"], images=small["images"], groups=small["groups"])
    out = save_grid(split, tmp_path / "sub" / "grid.png", classes=5, per_class=12)
    _check_png(out)
    with Image.open(out) as img:
        assert img.height == 5 * (64 + 2) + 2
    bundle = load_glyphs(SMALL, cache_dir=tmp_path, progress=False)
    _check_png(save_grid(bundle, tmp_path / "bundle.png"))
    _check_png(save_grid(bundle.tests[0], tmp_path / "test.png", classes=40, per_class=30, group_names=bundle.group_names, cell=32))


def test_save_grid_paths(tmp_path):
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label in range(3):
        for i in range(4):
            p = tmp_path / "img" / f"{label}_{i}.jpg"
            p.parent.mkdir(exist_ok=True)
            size = (20 + 5 * i, 30)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p, "JPEG")
            paths.append(str(p))
            labels.append(10 + label)
    split = ImageSplit(name="train", labels=np.array(labels), paths=paths)
    out = save_grid(split, tmp_path / "paths.png", classes=16, per_class=12)
    _check_png(out)
    with Image.open(out) as img:
        assert img.mode == "RGB" and img.height == 3 * (96 + 2) + 2
    broken = ImageSplit(name="train", labels=np.array([0]), paths=[str(tmp_path / "missing.jpg")])
    with pytest.raises(DatasetError, match="missing.jpg"):
        save_grid(broken, tmp_path / "broken.png")


# ------------------------------------------------------------- glyph_families: shaped like SOP


def test_glyph_families_classes_are_a_code_point_in_one_family():
    from dncml.trainers.data.glyph_families import FACES_PER_FAMILY, load_glyph_families, shape

    config = GlyphConfig(num_classes=24, instances_per_class=24, image_size=32, seed=0)
    families = load_glyph_families(config, progress=False)
    plain = load_glyphs(config, progress=False)
    assert families.train.num_classes == 3 * plain.train.num_classes  # every code point in 3 families
    assert families.tests[0].query.num_classes == 3 * plain.tests[0].query.num_classes
    np.testing.assert_array_equal(families.train.images, plain.train.images)  # the same render, relabelled
    assert np.all(families.train.labels // 3 == plain.train.labels)
    per_class = np.unique(families.train.labels, return_counts=True)[1]
    assert set(per_class.tolist()) == {8}  # 4 faces x (clean + augmented)
    arrays = render_glyphs(config)
    faces = arrays["faces"][arrays["split"][arrays["labels"]] == 0]
    for label in np.unique(families.train.labels)[:6]:
        family_faces = set((faces[families.train.labels == label] // FACES_PER_FAMILY).tolist())
        assert family_faces == {label % 3}  # one family's faces only
    assert not set(families.train.labels // 3) & set(families.tests[0].query.labels // 3)  # test code points unseen
    figures = shape(families, batch_size=16, epochs=4)
    assert figures["classes_per_learner"][8] == families.train.num_classes / 8 and figures["images_per_class"] == 8
    assert figures["steps_per_learner"][8] == 4 * (len(families.train) // 16) / 8


def test_glyph_families_is_listed_and_checked_with_its_shape():
    import os
    import subprocess
    import sys

    cli = [sys.executable, "-m", "dncml.platform.cli"]
    listed = subprocess.run([*cli, "datasets", "list"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert listed.returncode == 0 and "glyph_families" in listed.stdout
    checked = subprocess.run(
        [*cli, "datasets", "check", "glyph_families", "--classes", "48", "--instances", "12", "--image-size", "16", "--batch-size", "16"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "4.0 images per class" in checked.stdout
    assert "K = 8:" in checked.stdout and "steps per learner in 16 epochs" in checked.stdout
    assert "images/s" in checked.stdout
