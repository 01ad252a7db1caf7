"""From a RunSpec to a dataset bundle with its validation split, and to torch datasets."""
from __future__ import annotations

import os
from pathlib import Path

from ..spec import RunSpec
from .base import DatasetBundle, EvalSet, ImageSplit, carve_validation


def load_dataset(spec: RunSpec, cache_dir: str | Path | None = None, progress: bool = True) -> DatasetBundle:
    """Read (or render) the spec's dataset and carve the validation classes off its train split."""
    if spec.dataset == "glyphs":
        from .glyphs import GlyphConfig, load_glyphs

        config = GlyphConfig(num_classes=spec.glyph_classes, instances_per_class=spec.glyph_instances,
                             image_size=spec.resolved_image_size, seed=spec.dataset_seed)
        bundle = load_glyphs(config, Path(cache_dir) if cache_dir else None, progress=progress)
    else:
        from .benchmarks import read_benchmark

        bundle = read_benchmark(spec.dataset, os.path.expanduser(os.path.expandvars(spec.data_root)))
    train, val = carve_validation(bundle.train, spec.val_fraction, spec.dataset_seed)
    bundle.train = train
    bundle.val = EvalSet("val", val, None, bundle.recall_ks) if len(val) else None
    return bundle


def torch_dataset(split: ImageSplit, spec: RunSpec, train: bool):
    """Glyphs are pre-augmented at render time; photos get the paper's crops and flips."""
    from .torch_dataset import ImageDataset  # torch: imported only where a dataset is built

    if split.images is not None:
        return ImageDataset(split)
    from .benchmarks import photo_transforms

    size = spec.resolved_image_size
    return ImageDataset(split, photo_transforms(train=train, image_size=size, resize=int(round(size * 256 / 224))))


def metric_names(spec: RunSpec) -> list[str]:
    """The evaluation metrics a run of this spec reports (known before any data is read)."""
    if spec.dataset == "glyphs":
        from .glyphs import GLYPH_RECALL_KS as ks

        sets = ["test"]
    else:
        from .benchmarks import BENCHMARKS, VEHICLEID_TESTS

        ks = BENCHMARKS[spec.dataset].recall_ks
        sets = [name for name, _ in VEHICLEID_TESTS] if spec.dataset == "vehicleid" else ["test"]
    names = []
    for prefix in (["val"] if spec.val_fraction > 0 else []) + sets:
        names += [f"{prefix}_recall@{k}" for k in ks] + [f"{prefix}_nmi", f"{prefix}_map@r"]
    return names
