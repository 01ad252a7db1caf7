"""The tensor photo path (`data_path: gpu`): decode and augment whole batches on the run's device.

The DataLoader's `loader_workers` only read each file's encoded bytes (from disk or a pack) and
look at its JPEG header; the training process decodes a batch with one call of
`torchvision.io.decode_jpeg` (nvjpeg with device="cuda"; libjpeg-turbo on a CPU run) and applies
the paper's transforms as tensor operations on the same device:

- train: the crop of `RandomResizedCrop(image_size, scale=(crop_scale, 1))` drawn on the image as
  `Resize(resize)` would give it (the same sampler as torchvision's, 10 tries then the centre
  crop), taken from the decoded image and resized to image_size in one antialiased resize, a
  horizontal flip with probability 1/2, ImageNet normalisation;
- test: `Resize(resize)` then `CenterCrop(image_size)`, normalised: the PIL path's tensors to
  within JPEG-decoder and resize rounding (tests/test_tensor_path.py).

The random draws of step s come from a generator seeded by (torch's epoch seed, s), so a run
resumed at an epoch boundary draws the same crops. Batch s + 1 is made in a background thread
(on its own CUDA stream) while the training step uses batch s. A file the fast decoder cannot vouch for (not
a baseline or progressive 8-bit JPEG with 1 or 3 components, no end-of-image marker, i.e.
truncated, or more pixels than PIL's decompression-bomb limit) is decoded by PIL in the worker,
exactly as the cpu path does (same errors: `DatasetError` naming the file); so is a JPEG that
decode_jpeg refuses. `TensorBatches.cpu_decoded` counts them (the trainer reports it per epoch).
"""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dncml.trainers.data.base import DatasetError, ImageSplit
from dncml.trainers.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["EncodedImages", "TensorBatches", "crop_params", "jpeg_size", "resized_size"]

_HUFFMAN_FRAMES = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive (8-bit Huffman)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def jpeg_size(data: bytes | memoryview, max_pixels: int | None) -> tuple[int, int] | None:
    """(height, width) of a complete JPEG that decode_jpeg decodes as PIL does (8-bit Huffman
    frame, 1 or 3 components, ends with the end-of-image marker, at most max_pixels), else None."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) < 4 or data[:2] != b"\xff\xd8" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            if marker not in _HUFFMAN_FRAMES or i + 10 > n or data[i + 4] != 8 or data[i + 9] not in (1, 3):
                return None
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            if not height or not width or (max_pixels is not None and height * width > max_pixels):
                return None
            return height, width
        if marker == 0xDA or length < 2:  # a scan before any frame header, or a broken segment
            return None
        i += 2 + length
    return None


def _pil_pixels(split: ImageSplit, index: int) -> torch.Tensor:
    """Image `index` decoded by PIL and converted to RGB exactly as `ImageDataset` does (the same
    errors, word for word): uint8 (3, H, W)."""
    from .base import open_rgb

    path = split.paths[index]
    try:
        source = path if split.pack is None else io.BytesIO(split.read_bytes(index))
        image = np.asarray(open_rgb(source, name=path))
    except FileNotFoundError:
        raise DatasetError(f"missing image file: {path}") from None
    except DatasetError:
        raise
    except Exception as exc:  # UnidentifiedImageError, truncated data, DecompressionBombError, ...
        raise DatasetError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from None
    return torch.from_numpy(image.copy()).permute(2, 0, 1)


class EncodedImages(Dataset):
    """`dataset[i]` -> (encoded JPEG bytes as a uint8 tensor, or None; pixels (uint8 (3, H, W))
    decoded by PIL where the fast decoder cannot take the file, or None; (height, width); label;
    index)."""

    def __init__(self, split: ImageSplit):
        from PIL import Image

        from .base import MAX_DECODED_PIXELS

        self.split = split
        self.labels = np.asarray(split.labels, dtype=np.int64)
        # larger files go to PIL, which refuses them as the PIL path does (its bomb limit or ours)
        self.max_pixels = min(MAX_DECODED_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_DECODED_PIXELS)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        index = int(index)
        data = self.split.read_bytes(index)
        size = jpeg_size(data, self.max_pixels)
        if size is None:
            pixels = _pil_pixels(self.split, index)
            return None, pixels, tuple(pixels.shape[-2:]), int(self.labels[index]), index
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), None, size, int(self.labels[index]), index


def _keep(items):
    return items


def resized_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """The size `Resize(resize)` gives an image (shorter side = resize, as torchvision rounds)."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(resize * long / short)
    return (resize, new_long) if height <= width else (new_long, resize)


def crop_params(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop of an image of height x width: torchvision's
    `RandomResizedCrop.get_params` (area fraction uniform in scale, log-uniform aspect ratio in
    [3/4, 4/3], 10 tries, else the centre crop clamped to the ratio), drawn from rng."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TensorBatches:
    """Batches (float images on `device`, int64 labels, int64 indices) of a file split through
    the tensor path; iterable once per pass, like a DataLoader over a batch sampler.

    `cpu_decoded`: images of the last pass PIL decoded (non-JPEG or not vouched for, see the
    module docstring); `images`: all images of the last pass."""

    def __init__(
        self,
        split: ImageSplit,
        batches,
        device: torch.device | str,
        train: bool,
        image_size: int = 224,
        resize: int = 256,
        crop_scale: tuple[float, float] = (0.16, 1.0),
        workers: int = 0,
    ):
        if split.paths is None:
            raise ValueError(f"split {split.name!r} is an in-memory array, not image files")
        self.dataset = EncodedImages(split)
        self.batches = [list(map(int, b)) for b in batches]
        self.device = torch.device(device)
        self.train, self.image_size, self.resize, self.crop_scale = train, image_size, resize, tuple(crop_scale)
        self.workers = workers
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.cpu_decoded = 0
        self.images = 0
        self._pool = None
        self._count_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.batches)

    def _boxes(self, items, rng: np.random.Generator | None) -> tuple[list[tuple[int, int, int, int] | None], list[bool]]:
        """Per image, in batch order: the (top, left, height, width) box of the decoded image to
        resize to image_size (train), or None (test: Resize then CenterCrop); and the flips."""
        boxes, flips = [], []
        for _, _, (height, width), _, _ in items:
            if rng is None:
                boxes.append(None)
                continue
            rh, rw = resized_size(height, width, self.resize)
            top, left, h, w = crop_params(rh, rw, self.crop_scale, rng)
            flips.append(bool(rng.random() < 0.5))
            # the crop drawn on the resized image, taken from the decoded one: one resize, not two
            sy, sx = height / rh, width / rw
            y0, x0 = min(height - 1, round(top * sy)), min(width - 1, round(left * sx))
            y1, x1 = max(y0 + 1, min(height, round((top + h) * sy))), max(x0 + 1, min(width, round((left + w) * sx)))
            boxes.append((y0, x0, y1 - y0, x1 - x0))
        return boxes, flips

    def _crop(self, image: torch.Tensor, box) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        size = [self.image_size, self.image_size]
        if box is None:
            height, width = image.shape[-2:]
            return F.center_crop(F.resize(image, list(resized_size(height, width, self.resize)), antialias=True), size)
        return F.resized_crop(image, *box, size, antialias=True)

    def _decode_one(self, item) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        data, pixels, _, _, index = item
        if data is None:
            return pixels.to(self.device)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # decode_jpeg refuses it: PIL decides, as on the cpu path
            with self._count_lock:  # called from the CPU thread pool
                self.cpu_decoded += 1
            return _pil_pixels(self.dataset.split, index).to(self.device)

    def _images(self, items, boxes) -> list[torch.Tensor]:
        """uint8 (3, image_size, image_size) crops on the device. CUDA: the batch's JPEGs in one
        nvjpeg call, then one crop-resize kernel each. CPU: each image decoded and cropped in a
        thread pool (decode_jpeg and the resize release the GIL)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        self.cpu_decoded += sum(item[0] is None for item in items)
        if self.device.type == "cpu":
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max(1, torch.get_num_threads()))
            return list(self._pool.map(lambda k: self._crop(self._decode_one(items[k]), boxes[k]), range(len(items))))
        images: list[torch.Tensor | None] = [None if item[0] is not None else item[1].to(self.device) for item in items]
        jpegs = [k for k, item in enumerate(items) if item[0] is not None]
        if jpegs:
            try:
                decoded = decode_jpeg([items[k][0] for k in jpegs], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # some file of the batch: one by one, PIL for the ones refused
                decoded = [self._decode_one(items[k]) for k in jpegs]
            for k, image in zip(jpegs, decoded):
                images[k] = image
        return [self._crop(image, box) for image, box in zip(images, boxes)]

    def _batch(self, items, rng: np.random.Generator | None) -> torch.Tensor:
        boxes, flips = self._boxes(items, rng)
        batch = torch.stack(self._images(items, boxes))
        if flips:
            flip = torch.tensor(flips, device=batch.device).view(-1, 1, 1, 1)
            batch = torch.where(flip, batch.flip(-1), batch)
        return (batch.float().div_(255.0) - self.mean) / self.std

    def _produce(self, items, rng, stream):
        """One batch, made on the side stream on CUDA (so that it overlaps the training step)."""
        if stream is None:
            return self._batch(items, rng), None
        with torch.cuda.stream(stream):
            images = self._batch(items, rng)
            event = torch.cuda.Event()
            event.record(stream)
        return images, event

    def _deliver(self, future, items):
        images, event = future.result()
        if event is not None:  # the training stream waits for the side stream's batch
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            images.record_stream(current)
        self.images += len(items)
        labels = torch.tensor([item[3] for item in items], dtype=torch.int64)
        indices = torch.tensor([item[4] for item in items], dtype=torch.int64)
        return images, labels, indices

    def __iter__(self):
        """Batch s + 1 is decoded and augmented in a background thread while the caller uses batch s."""
        from concurrent.futures import ThreadPoolExecutor

        self.cpu_decoded = self.images = 0
        epoch_seed = torch.initial_seed()  # `seed_epoch` sets it from (seed, epoch, rank)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        loader = DataLoader(self.dataset, batch_sampler=self.batches, num_workers=self.workers, collate_fn=_keep)
        prefetch = ThreadPoolExecutor(1)
        try:
            pending = None
            for step, items in enumerate(loader):
                rng = np.random.default_rng([epoch_seed % 2**63, step]) if self.train else None
                future = prefetch.submit(self._produce, items, rng, stream)
                if pending is not None:
                    yield self._deliver(*pending)
                pending = (future, items)
            if pending is not None:
                yield self._deliver(*pending)
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
