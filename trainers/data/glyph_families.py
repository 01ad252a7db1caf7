"""`glyph_families`: the embedded testbed shaped like Stanford Online Products.

Why (issue 20): on `glyphs` at K = 8 each learner gets about 37 training classes and about 35
steps; SOP gives each about 1,400 classes and 7,500 steps. No result there can support or refute
the paper. This variant was chosen from these criteria, fixed before any of its Table 6 runs
(and never tuned on results):

- at least 300 training classes per learner at K = 8 (so 2,400+ training classes);
- 4 to 8 images per class (SOP: 5.3);
- a coarser group structure above the classes (SOP: 12 super-classes), for `gt_labels`;
- test classes disjoint from the training classes;
- at least 1,000 optimiser steps per learner at the longest budget, within what 2 cores run.

Design: a class is (code point, type family): one of the three DejaVu families, Sans, Serif and
Sans Mono, drawing one code point. Its images are that family's four faces (regular, bold,
oblique, bold-oblique), each clean and augmented (`glyph_instances` / 3 images: 8 for the
default 24, 4 for 12). So, as in SOP, a class is one object seen in a few "views" (weight and
slant here), and its nearest impostors are the same shape in another family (serifs, widths):
a fine-grained retrieval problem. The groups are the code points' scripts and Unicode blocks
(Latin, Greek, Cyrillic, arrows, ...), as for `glyphs`. Train and test split by code point, as
`glyphs` does, so no test code point is seen in training in any family.

Why not (code point, face): telling a face from its bold or oblique twin rests on stroke width
and slant, exactly what the render's augmentations (dilation, shear, rotation) vary, and 26,000
classes of near-duplicates would make a texture task, not a shape one. Families keep the
augmentations meaningful: weight and slant vary inside a class, what tells classes apart
(serifs, proportions) is not augmented away.

The images are the `glyphs` render of the same config (the same cache), relabelled: nothing new
is drawn. Shape at the full set, 24 instances, `val_fraction` 0.15: about 1,100 training code
points x 3 = 3,300 training classes, 2,800 after validation, 350 per learner at K = 8; 8 images
per class. With batch 32 (8 classes of m = 4) an epoch is about 700 steps, so 12 epochs give
each of 8 learners 1,000+ steps. `dncml datasets check glyph_families` prints the measured figures.

Known limitation: the trainer carves validation by class, so a validation class may share its
code point with a training class of another family (validation is easier than test; it only
selects the epoch). The test set is disjoint by code point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .base import DatasetBundle, EvalSet, ImageSplit
from .glyphs import GLYPH_FACES, GlyphConfig, _read_cache, glyph_config, prepare_glyphs

FAMILIES = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono")
FACES_PER_FAMILY = len(GLYPH_FACES) // len(FAMILIES)  # regular, bold, oblique, bold-oblique
RECALL_KS = DATASETS.info("glyph_families").recall_ks
assert all(face.startswith(FAMILIES[i // FACES_PER_FAMILY]) for i, face in enumerate(GLYPH_FACES))


def load_glyph_families(config: GlyphConfig, cache_dir: Path | None = None, progress: bool = True) -> DatasetBundle:
    """The `glyphs` render of `config`, relabelled: class = code point x 3 + family."""
    path = prepare_glyphs(config, cache_dir, progress=progress)
    arrays, group_names = _read_cache(path, config)
    family = arrays["faces"].astype(np.int64) // FACES_PER_FAMILY
    labels = arrays["labels"] * len(FAMILIES) + family
    in_test = arrays["split"][arrays["labels"]] == 1

    def part(name: str, mask: np.ndarray) -> ImageSplit:
        idx = np.flatnonzero(mask)
        return ImageSplit(name=name, labels=labels[idx], images=arrays["images"][idx], groups=arrays["groups"][idx])

    return DatasetBundle(
        name="glyph_families",
        train=part("train", ~in_test),
        tests=[EvalSet("test", query=part("test", in_test), gallery=None, recall_ks=RECALL_KS)],
        recall_ks=RECALL_KS,
        channels=DATASETS.info("glyph_families").channels,
        group_names=group_names,
    )


@DATASETS.register("glyph_families")
def load_for_spec(spec, progress: bool = True, cache_dir: Path | None = None) -> DatasetBundle:
    return load_glyph_families(glyph_config(spec), cache_dir, progress=progress)


def shape(bundle: DatasetBundle, batch_size: int = 32, epochs: int = 16, learners: tuple[int, ...] = (4, 8)) -> dict:
    """The figures the testbed was chosen by: training classes per learner at each K, images per
    class, and optimiser steps per learner in `epochs` epochs of `batch_size` (uniform learners:
    an epoch is N / B steps, each learner about 1 / K of them)."""
    train = bundle.train
    classes = train.num_classes
    steps_per_epoch = len(train) // batch_size
    return {
        "train_classes": classes,
        "train_images": len(train),
        "images_per_class": len(train) / max(classes, 1),
        "groups": len(np.unique(train.groups)),
        "test_classes": bundle.tests[0].query.num_classes,
        "classes_per_learner": {k: classes / k for k in learners},
        "steps_per_epoch": steps_per_epoch,
        "steps_per_learner": {k: epochs * steps_per_epoch / k for k in learners},
        "batch_size": batch_size,
        "epochs": epochs,
    }


def training_speed(bundle: DatasetBundle, batch_size: int = 32, steps: int = 12) -> float:
    """Images per second of a training step (GlyphNet, margin loss, K = 8, channels-last, one
    thread), timed over `steps` steps after two warm-up steps: what a `quick` trial on one of two
    cores trains at."""
    import time

    import torch

    from ..model import DivideAndConquerNet
    from ..runtime import make_optimizer, memory_format
    from ..sampler import ClusterBatchSampler
    from ..spec import from_dict

    spec = from_dict({"dataset": "glyph_families", "num_learners": 8, "batch_size": batch_size})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, targets = np.unique(bundle.train.labels, return_inverse=True)
        net = DivideAndConquerNet(spec, 1, int(targets.max()) + 1).to(memory_format=memory_format(spec)).train()
        optimizer, _ = make_optimizer(spec, net)
        sampler = ClusterBatchSampler(targets, batch_size, spec.samples_per_class, seed=0)
        sampler.set_assignment(targets % 8, 8)  # whole classes per learner
        labels = torch.from_numpy(targets)
        started, images_seen = 0.0, 0
        for i, step in enumerate(sampler.epoch(0, steps + 2)):
            if i == 2:
                started, images_seen = time.perf_counter(), 0
            images = torch.from_numpy(bundle.train.images[step.indices]).float().div_(255).unsqueeze(1)
            loss, _ = net(images.contiguous(memory_format=memory_format(spec)), labels[step.indices], (step.cluster, step.cluster + 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += len(step.indices)
        return images_seen / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
