"""From a RunSpec to a dataset bundle with its validation split, and to torch datasets."""

from __future__ import annotations

from pathlib import Path

from ..metric_keys import VALIDATION
from ..registry import DATASETS
from ..spec import RunSpec
from .base import DatasetBundle, EvalSet, ImageSplit, carve_validation, read_data_root, verified
from .pack import is_pack, read_pack

# The RunSpec fields a dataset bundle depends on (what `load_dataset` and the readers take): two
# specs equal in these read the same data.
DATA_FIELDS = ("dataset", "data_root", "glyph_classes", "glyph_instances", "image_size", "val_fraction", "dataset_seed")


def load_dataset(spec: RunSpec, cache_dir: str | Path | None = None, progress: bool = True) -> DatasetBundle:
    """Read (or render) the spec's dataset and carve the validation classes off its train split."""
    if DATASETS.info(spec.dataset).needs_root:
        bundle = read_data_root(spec.data_root, lambda root: read_root(spec.dataset, root, seed=spec.dataset_seed))
    else:
        bundle = DATASETS.create(spec.dataset, spec, progress=progress, cache_dir=Path(cache_dir) if cache_dir else None)
    train, val = carve_validation(bundle.train, spec.val_fraction, spec.dataset_seed)
    bundle.train = train
    bundle.val = EvalSet(VALIDATION, val, None, bundle.recall_ks) if len(val) else None
    return bundle


def read_root(name: str, root: str | Path, seed: int = 0, verify_images: bool = False) -> DatasetBundle:
    """Dataset `name` (one declared `needs_root`) read from root: the unpacked archive, by its
    registered reader `reader(Path(root), seed=seed)`, or a pack of it (`dncml datasets pack`: the
    split as it was drawn when packed); every image decoded first when verify_images."""
    bundle = read_pack(root, expected=name) if is_pack(root) else DATASETS.builder(name)(Path(root), seed=seed)
    return verified(bundle, verify_images)


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
