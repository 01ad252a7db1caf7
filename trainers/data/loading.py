"""From a RunSpec to a dataset bundle with its validation split, and to torch datasets."""

from __future__ import annotations

from pathlib import Path

from ..registry import DATASETS
from ..spec import RunSpec
from .base import DatasetBundle, EvalSet, ImageSplit, carve_validation

# The RunSpec fields a dataset bundle depends on (what `load_dataset` and the readers take): two
# specs equal in these read the same data.
DATA_FIELDS = ("dataset", "data_root", "glyph_classes", "glyph_instances", "image_size", "val_fraction", "dataset_seed")


def load_dataset(spec: RunSpec, cache_dir: str | Path | None = None, progress: bool = True) -> DatasetBundle:
    """Read (or render) the spec's dataset and carve the validation classes off its train split."""
    bundle = DATASETS.create(spec.dataset, spec, progress=progress, cache_dir=Path(cache_dir) if cache_dir else None)
    train, val = carve_validation(bundle.train, spec.val_fraction, spec.dataset_seed)
    bundle.train = train
    bundle.val = EvalSet("val", val, None, bundle.recall_ks) if len(val) else None
    return bundle


def torch_dataset(split: ImageSplit, spec: RunSpec, train: bool):
    """Glyphs are pre-augmented at render time; photos get the paper's crops and flips."""
    from .torch_dataset import ImageDataset, photo_transforms  # torch: imported only where a dataset is built

    if split.images is not None:
        return ImageDataset(split)
    size = spec.resolved_image_size
    return ImageDataset(split, photo_transforms(train=train, image_size=size, resize=photo_resize(size), crop_scale=(spec.crop_scale, 1.0)))


def photo_resize(image_size: int) -> int:
    """The shorter side photos are resized to before the crop: 256 for 224 crops (the paper)."""
    return int(round(image_size * 256 / 224))


def metric_names(spec: RunSpec) -> list[str]:
    """The evaluation metrics a run of this spec reports (known before any data is read)."""
    info = DATASETS.info(spec.dataset)
    names = []
    for prefix in (["val"] if spec.val_fraction > 0 else []) + list(info["test_sets"]):
        names += [f"{prefix}_recall@{k}" for k in info["recall_ks"]] + [f"{prefix}_nmi", f"{prefix}_map@r"]
    return names
