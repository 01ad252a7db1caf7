"""A torch Dataset over an `ImageSplit`: in-memory uint8 arrays (glyphs) or image files (photos)."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch.utils.data import Dataset

from dncml.trainers.data.base import DatasetError, ImageSplit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["ArrayBatches", "ImageDataset", "photo_transforms", "IMAGENET_MEAN", "IMAGENET_STD"]


class ImageDataset(Dataset):
    """`dataset[i]` -> (image tensor, label: int, index: int); the default collate stacks them
    into (float batch, int64 labels, int64 indices).

    Array splits (split.images, uint8 (n, H, W) grayscale or (n, H, W, C)): the image becomes a
    float tensor (1, H, W) (or (C, H, W)) scaled to [0, 1]; with transform None it is then
    normalised with mean 0.5 / std 0.5 (range [-1, 1]); otherwise `transform` is applied to the
    [0, 1] tensor (so it must take tensors).

    Path splits (split.paths): the file (or its bytes in the split's pack) is opened with PIL and
    converted to RGB, then `transform`
    is applied (with None: `photo_transforms(train=False)`, i.e. resize 256, centre crop 224,
    ImageNet normalisation). A file that is missing or cannot be decoded raises DatasetError naming
    its path.
    """

    def __init__(self, split: ImageSplit, transform=None):
        self.split = split
        self.transform = transform
        self.labels = np.asarray(split.labels, dtype=np.int64)
        if split.images is not None:
            images = np.asarray(split.images)
            if images.dtype != np.uint8:
                raise DatasetError(f"split {split.name!r}: image array must be uint8, got {images.dtype}")
            if images.ndim not in (3, 4):
                raise DatasetError(f"split {split.name!r}: image array must be (n, H, W) or (n, H, W, C), got shape {images.shape}")
            self.images = images
            self.paths = None
        else:
            self.images = None
            self.paths = list(split.paths)
            if self.transform is None:
                self.transform = photo_transforms(train=False)

    def __len__(self) -> int:
        return len(self.labels)

    def _array_item(self, index: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).to(torch.float32).div_(255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()
        if self.transform is None:
            return x.sub_(0.5).div_(0.5)
        return self.transform(x)

    def _path_item(self, index: int):
        from .base import open_rgb

        path = self.paths[index]
        source = path if self.split.pack is None else io.BytesIO(self.split.read_bytes(index))
        try:
            image = open_rgb(source, name=path)
        except DatasetError:
            raise
        except FileNotFoundError:
            raise DatasetError(f"missing image file: {path}") from None
        except Exception as exc:  # UnidentifiedImageError, truncated data, ...
            raise DatasetError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from None
        return self.transform(image)

    def __getitem__(self, index: int):
        index = int(index)
        image = self._array_item(index) if self.images is not None else self._path_item(index)
        return image, int(self.labels[index]), index


class ArrayBatches:
    """Batches of an in-memory uint8 split, each gathered and scaled in one tensor operation:
    the same tensors `ImageDataset` + the default collate give (grayscale -> (B, 1, H, W),
    colour -> (B, C, H, W), scaled to [-1, 1] by the same operations), without a Python call per
    image. Iterable once per batch list, like a DataLoader over a batch sampler."""

    def __init__(self, split: ImageSplit, batches):
        if split.images is None:
            raise ValueError(f"split {split.name!r} holds image files, not an in-memory array")
        self.images, self.labels, self.batches = split.images, np.asarray(split.labels, dtype=np.int64), batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            index = np.asarray(batch, dtype=np.int64)
            x = torch.from_numpy(self.images[index])
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            yield x.float().div_(255.0).sub_(0.5).div_(0.5), torch.from_numpy(self.labels[index]), torch.from_numpy(index)


def photo_transforms(
    train: bool,
    image_size: int = 224,
    resize: int = 256,
    crop_scale: tuple[float, float] = (0.16, 1.0),
):
    """torchvision transforms for the photo benchmarks (input: a PIL RGB image).

    train: Resize(resize) -> RandomResizedCrop(image_size, scale=crop_scale) -> RandomHorizontalFlip.
      The paper says "224x224 crops from 256 resize, random crop + flip"; like common DML code
      (e.g. Roth et al.'s and Musgrave et al.'s benchmarks) the crop is a RandomResizedCrop with
      scale (0.16, 1) taken after the resize of the shorter side to `resize`.
    eval:  Resize(resize) -> CenterCrop(image_size).
    Both end with ToTensor and ImageNet Normalize, giving a float tensor (3, image_size, image_size).
    """
    from torchvision import transforms as T

    if train:
        steps = [
            T.Resize(resize),
            T.RandomResizedCrop(image_size, scale=tuple(crop_scale)),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [T.Resize(resize), T.CenterCrop(image_size)]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)
