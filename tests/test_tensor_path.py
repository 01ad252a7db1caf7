"""`data_path: gpu`, the tensor photo path (decode_jpeg + tensor transforms in the training process),
against the PIL path it replaces, on real JPEG files written by PIL; and packed datasets.

Everything runs on the CPU (where `data_path: gpu` runs the same tensor path on the CPU); the
tests marked `cuda` run the same code with device="cuda" (nvjpeg) and skip without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from dncml.trainers.data.base import DatasetError, ImageSplit
from dncml.trainers.data.benchmarks import check_dataset, pack_dataset, read_benchmark, verify_image_files
from dncml.trainers.data.pack import read_pack
from dncml.trainers.data.tensor_path import TensorBatches, jpeg_size
from dncml.trainers.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, photo_transforms
from dncml.trainers.runtime import resolve_data_path
from dncml.trainers.spec import SpecError, field_help, from_dict

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the nvjpeg run of the same test is skipped")
    ),
]

# (width, height, PIL mode): sizes and aspect ratios around the benchmarks', greyscale and CMYK
# among them, one smaller than the resize and one of a single pixel
IMAGES = [
    (300, 200, "RGB"),
    (500, 375, "RGB"),
    (240, 640, "RGB"),
    (640, 480, "L"),
    (360, 360, "CMYK"),
    (180, 120, "RGB"),
    (1, 1, "RGB"),
]


def ramp(width: int, height: int) -> np.ndarray:
    """R = x, G = y (0..255 across the image), B constant: a crop's position and size and a flip
    can be read back from the transformed pixels."""
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(width - 1, 1)
    g = y * 255 // max(height - 1, 1)
    return np.stack([r, g, np.full_like(r, 128)], -1).astype(np.uint8)


def write_images(folder: Path, specs=IMAGES, png: bool = True) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height, mode) in enumerate(specs):
        image = Image.fromarray(ramp(width, height))
        if mode != "RGB":
            image = image.convert(mode)
        paths.append(str(folder / f"{i}_{width}x{height}_{mode}.jpg"))
        image.save(paths[-1], "JPEG", quality=95)
    if png:
        paths.append(str(folder / "ramp.png"))
        Image.fromarray(ramp(200, 150)).save(paths[-1])
    return paths


def to_uint8_scale(x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to 0..255."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def pil_batch(split: ImageSplit, train: bool, crop_scale=(0.16, 1.0)) -> torch.Tensor:
    dataset = ImageDataset(split, photo_transforms(train, 224, 256, crop_scale))
    return torch.stack([dataset[i][0] for i in range(len(split))])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Per-image resizes on two intra-op threads crawl on a busy 2-core machine (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ the spec


def test_data_path_is_a_validated_spec_field():
    assert from_dict({}).data_path == "auto" and "one of: auto, cpu, gpu" in field_help()["data_path"]
    with pytest.raises(SpecError, match=r"'data_path' = 'nvjpeg': allowed values are auto, cpu, gpu"):
        from_dict({"data_path": "nvjpeg"})
    with pytest.raises(SpecError, match=r"'crop_scale' = 0.0: must be in \(0, 1\]"):
        from_dict({"crop_scale": 0})
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert resolve_data_path(from_dict({})) == expected  # auto: gpu on a CUDA device
    assert resolve_data_path(from_dict({"device": "cpu"})) == "cpu"
    assert resolve_data_path(from_dict({"device": "cpu", "data_path": "gpu"})) == "gpu"  # the tensor path on the CPU
    assert resolve_data_path(from_dict({"data_path": "cpu"})) == "cpu"


# ----------------------------------------------------------------------- the same test tensors


@pytest.mark.parametrize("device", DEVICES)
def test_test_tensors_equal_the_pil_path(tmp_path, device):
    paths = write_images(tmp_path)
    split = ImageSplit("test", labels=np.arange(len(paths)), paths=paths)
    reference = pil_batch(split, train=False)
    batches = TensorBatches(split, [[0, 1, 2, 3], [4, 5, 6, 7]], device, train=False)
    got, labels, indices = (torch.cat(parts) for parts in zip(*batches))
    assert got.device.type == device and got.shape == reference.shape == (len(paths), 3, 224, 224)
    assert labels.tolist() == indices.tolist() == list(range(len(paths)))
    # CMYK and the PNG went through PIL in the workers; every other file through decode_jpeg
    assert batches.cpu_decoded == 2 and batches.images == len(paths)
    diff = (to_uint8_scale(got.cpu()) - to_uint8_scale(reference)).abs()
    # libjpeg-turbo decodes exactly as PIL's does; torch's antialiased uint8 resize is PIL's to
    # one level; nvjpeg's IDCT and colour conversion round differently by a few levels
    max_levels, mean_levels = (1.01, 0.05) if device == "cpu" else (6.0, 1.0)
    assert diff.amax().item() <= max_levels and diff.mean().item() <= mean_levels, (diff.amax(), diff.mean())


# -------------------------------------------------------------------- the same distribution


def crop_statistics(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per image, from the ramp's pixels: the crop's width and height as fractions of the image,
    its centre (fractions), and whether it was flipped."""
    x = to_uint8_scale(batch.cpu()).numpy()
    red, green = x[:, 0], x[:, 1]
    left, right = red[:, :, 2].mean(1), red[:, :, -3].mean(1)  # 2 pixels in: clear of the resize's edge
    top, bottom = green[:, 2, :].mean(1), green[:, -3, :].mean(1)
    flipped = right < left
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    inner = (224 - 5) / 224  # the two columns read are 219 / 224 of the crop apart
    return {
        "width": (hi - lo) / 255 / inner,
        "height": (bottom - top) / 255 / inner,
        "centre_x": (hi + lo) / 2 / 255,
        "centre_y": (bottom + top) / 2 / 255,
        "flipped": flipped.astype(float),
    }


@pytest.mark.parametrize("device", DEVICES)
def test_training_crops_have_the_pil_paths_distribution(tmp_path, device):
    # aspect ratios 3:2 to 1:2, one smaller than the resize (upsampled)
    shapes = [(300, 200, "RGB"), (400, 300, "RGB"), (240, 420, "RGB"), (280, 280, "RGB"), (400, 200, "RGB"), (210, 160, "RGB")]
    paths = write_images(tmp_path, shapes, png=False)
    draws = 30  # each image many times: 180 crops a path
    split = ImageSplit("train", labels=np.zeros(len(paths) * draws), paths=paths * draws)
    torch.manual_seed(1)
    reference = crop_statistics(pil_batch(split, train=True, crop_scale=(0.3, 1.0)), [])
    batches = TensorBatches(split, np.arange(len(split)).reshape(-1, 60), device, train=True, crop_scale=(0.3, 1.0))
    torch.manual_seed(2)  # the tensor path's draws come from the epoch seed: another stream
    got = crop_statistics(torch.cat([b[0] for b in batches]), [])
    for key in ("width", "height", "centre_x", "centre_y"):
        assert ks_2samp(reference[key], got[key]).pvalue > 0.01, key
        assert abs(np.median(reference[key]) - np.median(got[key])) < 0.06, key
    assert abs(reference["flipped"].mean() - 0.5) < 0.1 and abs(got["flipped"].mean() - 0.5) < 0.1
    # a different crop_scale is a different distribution, and the test sees it
    narrow = TensorBatches(split, np.arange(60).reshape(-1, 60), device, train=True, crop_scale=(0.9, 1.0))
    tight = crop_statistics(torch.cat([b[0] for b in narrow]), [])
    assert ks_2samp(reference["width"], tight["width"]).pvalue < 1e-6


def test_training_crops_are_seeded_per_step(tmp_path):
    paths = write_images(tmp_path, IMAGES[:3], png=False)
    split = ImageSplit("train", labels=np.zeros(6), paths=paths * 2)

    def epoch(seed):
        torch.manual_seed(seed)
        return torch.cat([b[0] for b in TensorBatches(split, [[0, 1, 2], [3, 4, 5]], "cpu", train=True)])

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first[:3], first[3:])  # the two steps draw different crops of the same files


# ------------------------------------------------------------------------------- bad input


def bad_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["text"] = str(folder / "not_an_image.jpg")
    Path(files["text"]).write_text("this is not a JPEG")
    files["truncated"] = str(folder / "truncated.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(files["truncated"], "JPEG")
    data = Path(files["truncated"]).read_bytes()
    Path(files["truncated"]).write_bytes(data[: len(data) // 2])
    files["cmyk"] = str(folder / "cmyk.jpg")
    Image.fromarray(ramp(64, 48)).convert("CMYK").save(files["cmyk"], "JPEG")
    files["pixel"] = str(folder / "pixel.jpg")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(files["pixel"], "JPEG")
    files["progressive"] = str(folder / "progressive.jpg")
    Image.fromarray(ramp(120, 90)).save(files["progressive"], "JPEG", progressive=True)
    files["bomb"] = str(folder / "bomb.jpg")
    Image.fromarray(ramp(400, 400)).save(files["bomb"], "JPEG")  # a bomb once the limit below is set
    return files


def first_error(run) -> str | None:
    try:
        run()
    except DatasetError as exc:
        return str(exc)
    return None


def test_bad_files_fail_as_on_the_pil_path_and_in_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # 400 x 400 > 2 x 60,000 > a 224 x 224 crop: PIL's DecompressionBombError
    files = bad_files(tmp_path)
    assert jpeg_size(Path(files["pixel"]).read_bytes(), None) == (1, 1)
    assert jpeg_size(Path(files["progressive"]).read_bytes(), None) == (90, 120)  # decode_jpeg takes it
    assert jpeg_size(Path(files["cmyk"]).read_bytes(), None) is None  # 4 components: PIL converts it
    assert jpeg_size(Path(files["truncated"]).read_bytes(), None) is None  # no end-of-image marker
    assert jpeg_size(Path(files["bomb"]).read_bytes(), 60_000) is None  # over the limit: PIL decides
    expected = {"text": "UnidentifiedImageError", "truncated": "image file is truncated", "bomb": "DecompressionBombError"}
    for kind, path in files.items():
        split = ImageSplit("s", labels=np.zeros(1), paths=[path])
        pil = first_error(lambda split=split: ImageDataset(split)[0])
        tensor = first_error(lambda split=split: next(iter(TensorBatches(split, [[0]], "cpu", train=False))))
        assert pil == tensor, kind  # the same message, naming the file
        if kind in expected:
            assert tensor is not None and expected[kind] in tensor and path in tensor, (kind, tensor)
        else:  # CMYK, progressive and 1-pixel images decode, on both paths, to the same tensor
            assert tensor is None
            tensor_image = next(iter(TensorBatches(split, [[0]], "cpu", train=False)))[0][0]
            assert (to_uint8_scale(tensor_image[None]) - to_uint8_scale(ImageDataset(split)[0][0][None])).abs().amax() <= 1.01
    # the check before training finds exactly the three
    with pytest.raises(DatasetError) as info:
        verify_image_files(list(files.values()))
    text = str(info.value)
    assert text.startswith("3 of 6 image files cannot be decoded")
    for kind in expected:
        assert files[kind] in text
    assert files["cmyk"] not in text and files["pixel"] not in text and files["progressive"] not in text


# ----------------------------------------------------------------------------------- packs


def make_sop(root: Path) -> Path:
    from test_benchmarks import make_sop as tiny_sop

    tiny_sop(root)
    # one real-sized greyscale photo among the noise squares
    Image.fromarray(ramp(320, 240)).convert("L").save(root / "bicycle_final" / "1_0.JPG", "JPEG")
    return root


def test_a_pack_reads_like_the_tree_on_both_paths(tmp_path, capsys):
    root = make_sop(tmp_path / "sop")
    pack = tmp_path / "pack"
    manifest = pack_dataset("sop", root, pack, shard_bytes=1500)
    assert len(manifest["shards"]) > 1  # 1,500-byte shards: several
    assert {p.name for p in pack.iterdir()} == {"index.parquet", "pack.json", *(s["file"] for s in manifest["shards"])}
    tree, packed = read_benchmark("sop", root), read_benchmark("sop", pack)
    assert packed.train.pack is not None and tree.train.pack is None
    for a, b in ((tree.train, packed.train), (tree.tests[0].query, packed.tests[0].query)):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.groups, b.groups) and len(a) == len(b)
        assert [p[len(str(root)) :] for p in a.paths] == [p[len(str(pack)) :] for p in b.paths]
        assert all(b.read_bytes(i) == Path(a.paths[i]).read_bytes() for i in range(len(a)))
        # both data paths read the pack: the same tensors as from the files
        assert torch.equal(pil_batch(a, False), pil_batch(b, False))
        order = [list(range(len(a)))]
        assert torch.equal(next(iter(TensorBatches(a, order, "cpu", False)))[0], next(iter(TensorBatches(b, order, "cpu", False)))[0])
    assert packed.group_names == tree.group_names and packed.recall_ks == tree.recall_ks
    subset = packed.train.subset(np.array([1, 0]))
    assert subset.pack is packed.train.pack and subset.read_bytes(1) == packed.train.read_bytes(0)
    from dncml.trainers.data.preview import save_grid

    assert Path(save_grid(packed.train, tmp_path / "grid.png", classes=2, per_class=2)).read_bytes()[:4] == b"\x89PNG"
    report = check_dataset("sop", pack, verify_images=True)
    assert report["packed"] and report["images"] == 10 and report["splits"] == check_dataset("sop", root)["splits"]
    with pytest.raises(DatasetError, match="holds dataset 'sop', not 'cub'"):
        read_benchmark("cub", pack)
    with pytest.raises(DatasetError, match="exists and is not an empty directory"):
        pack_dataset("sop", root, pack)


def test_a_truncated_shard_or_a_bad_image_in_a_pack_is_one_clear_error(tmp_path):
    root = make_sop(tmp_path / "sop")
    (root / "sofa_final" / "5_1.JPG").write_bytes(b"not an image at all")
    pack = tmp_path / "pack"
    pack_dataset("sop", root, pack)
    assert check_dataset("sop", pack)["images"] == 10  # shards whole: the cheap check passes
    with pytest.raises(DatasetError, match=r"(?s)1 of 10 image files cannot be decoded.*sofa_final/5_1\.JPG: UnidentifiedImageError"):
        check_dataset("sop", pack, verify_images=True)
    shard = pack / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    for reading in (lambda: read_benchmark("sop", pack), lambda: check_dataset("sop", pack), lambda: read_pack(pack)):
        truncated = r"pack shard .*shard-00000\.bin is [\d,]+ bytes, the manifest says [\d,]+ bytes: a truncated"
        with pytest.raises(DatasetError, match=truncated):
            reading()
    shard.unlink()
    with pytest.raises(DatasetError, match=r"shard-00000\.bin is missing"):
        read_pack(pack)


def test_the_pack_command(tmp_path):
    root = make_sop(tmp_path / "sop")
    cli = [sys.executable, "-m", "dncml.platform.cli", "datasets"]
    packed = subprocess.run(
        [*cli, "pack", "sop", "--root", str(root), "--out", str(tmp_path / "p")], capture_output=True, text=True, timeout=120
    )
    assert packed.returncode == 0, packed.stderr
    assert "packed 10 image files" in packed.stdout and "1 shard(s)" in packed.stdout and "test/query" in packed.stdout
    checked = subprocess.run(
        [*cli, "check", "sop", "--root", str(tmp_path / "p"), "--verify-images"], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert "(a pack: shards and index intact): 10 image files" in checked.stdout


# ------------------------------------------------------------------------------ in the trainer


def test_a_run_trains_on_the_tensor_path_and_reports_the_pil_decodes(tmp_path):
    from test_folder import make_folder

    from dncml.trainers import divide_and_conquer as dnc
    from dncml.trainers.seam import Seam

    root = make_folder(tmp_path / "images", classes=16, per_class=4)  # half the files are PNGs
    pack_dataset("folder", root, tmp_path / "pack")
    base = dict(dataset="folder", image_size=32, K=2, d=16, batch_size=8, m=2, epochs=1, steps_per_epoch=3, device="cpu", val_fraction=0.25)
    histories = {}
    for data_path, data_root in (("cpu", root), ("gpu", tmp_path / "pack")):  # the tensor path trains from the pack
        spec = from_dict({**base, "data_path": data_path, "data_root": str(data_root)})
        history = []
        dnc.train(spec, Seam(report=lambda m, c, history=history: history.append(m), checkpoint_root=str(tmp_path / data_path)))
        histories[data_path] = history[-1]
    gpu, cpu = histories["gpu"], histories["cpu"]
    assert "cpu_decoded_images" not in cpu
    assert 0 < gpu["cpu_decoded_images"] < 24  # the PNGs among the 3 x 8 training images drawn
    for metrics in (cpu, gpu):
        assert np.isfinite(metrics["loss"]) and 0 <= metrics["test_recall@1"] <= 1
