"""Resolving a run's `pretrained:` to a weights file, and pre-training GlyphNet by classification
on the glyph pre-training classes (`pretrained: glyphs`).

`resolve_weights` is the one place that turns `pretrained:` (null, "glyphs", "cache", a local
path) into a file; a backbone builder (`backbones.py`) only loads the file it is given. Callers
run it before they build a model, so that pre-training is never a hidden side effect of
building one (nor of its RNG draws).

The embedded dataset's analogue of the ImageNet backbone the paper starts from: a supervised
classifier trained on classes that are in neither the train nor the test split of `glyphs`
(`data/pretraining_glyphs.py`), whose classification head is then thrown away. Deterministic for
its seed (on one machine: float reductions depend on the thread count, recorded with the
weights), cached under `$DNCML_CACHE/pretrained/` with its provenance, like the glyph render.

The default pre-training ships with dncml (`weights/<key>.pt` and its provenance, 370 KiB): a
fresh machine starts from the same bytes as the README's numbers instead of spending 3-4 CPU
minutes on a backbone that another machine's float reductions might make differently. Its
sha256 is checked before it is copied into the cache; `dncml pretrain glyphnet --from-scratch`
trains it again and says whether the bytes match.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import GlyphNet
from .data.base import default_cache_dir
from .data.pretraining_glyphs import PretrainingSet, load_pretraining_set  # noqa: F401 (PretrainingSet: the config's type)
from .files import publishing_dir

log = logging.getLogger(__name__)
WEIGHTS = "weights.pt"
PROVENANCE = "provenance.json"
SHIPPED_DIR = Path(__file__).with_name("weights")  # package data: `<key>.pt` + `<key>.json`

if TYPE_CHECKING:
    from .spec import RunSpec


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    images_per_face: int = 2
    image_size: int = 32
    seed: int = 0
    max_classes: int | None = None  # None: all 3,120 pre-training classes

    @property
    def data(self) -> PretrainingSet:
        return PretrainingSet(self.images_per_face, self.image_size, self.seed, self.max_classes)

    @property
    def key(self) -> str:
        return (
            f"glyphnet-e{self.epochs}-b{self.batch_size}-lr{self.lr:g}-wd{self.weight_decay:g}-ls{self.label_smoothing:g}-{self.data.key}"
        )


def pretrained_dir(config: PretrainConfig, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "pretrained" / config.key


class ShippedWeightsCorrupt(RuntimeError):
    """The weights shipped with dncml do not match the sha256 of their provenance."""


def shipped_weights(config: PretrainConfig) -> tuple[Path, dict] | None:
    """The shipped weights file for `config` and its provenance, or None when none ships."""
    weights = SHIPPED_DIR / f"{config.key}.pt"
    provenance = SHIPPED_DIR / f"{config.key}.json"
    if not (weights.is_file() and provenance.is_file()):
        return None
    return weights, json.loads(provenance.read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrained_glyphnet(
    config: PretrainConfig = PretrainConfig(), cache_dir: Path | None = None, progress: bool = True, shipped: bool = True
) -> Path:
    """The weights file of a GlyphNet pre-trained with `config`: from the cache; else, with
    `shipped`, the copy that ships with dncml for this config (checked, then cached); else
    trained now (a few minutes on a laptop CPU) and cached."""
    target = pretrained_dir(config, cache_dir)
    if (target / WEIGHTS).is_file():
        return target / WEIGHTS
    found = shipped_weights(config) if shipped else None
    with publishing_dir(target, done=lambda found: (found / WEIGHTS).is_file()) as tmp:
        if found is not None:
            source, provenance = found
            if _sha256(source) != provenance.get("sha256"):
                raise ShippedWeightsCorrupt(
                    f"{source}: its sha256 is not the {provenance.get('sha256')} of {source.with_suffix('.json').name}; "
                    f"reinstall dncml, or train it here with `dncml pretrain glyphnet --from-scratch`"
                )
            (tmp / WEIGHTS).write_bytes(source.read_bytes())
            provenance = {**provenance, "source": f"shipped with dncml ({source.name})"}
            log.info("pre-trained GlyphNet: the copy shipped with dncml (%s)", source.name)
        else:
            state, provenance = train_classifier(config, cache_dir, progress)
            torch.save(state, tmp / WEIGHTS)
            provenance["sha256"] = _sha256(tmp / WEIGHTS)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return target / WEIGHTS


def resolve_weights(spec: RunSpec, progress: bool = True) -> Path | None:
    """The weights file the run's backbone starts from (None: from scratch). `glyphs`: the cached
    pre-trained GlyphNet for the run's image size, pre-trained now when it is not cached (minutes
    on a CPU; the caller asked for it: run this before seeding and building the model). `cache`:
    torchvision's ImageNet file in the torch hub cache. Anything else: a local file. Never
    downloads."""
    if spec.pretrained is None:
        return None
    if spec.pretrained == "glyphs":
        return pretrained_glyphnet(PretrainConfig(image_size=spec.resolved_image_size), progress=progress)
    if spec.pretrained == "cache":
        return torchvision_cache_file(spec.backbone)
    return Path(os.path.expanduser(spec.pretrained))


def torchvision_cache_file(backbone: str) -> Path:
    """torchvision's weights file for `backbone` (`<backbone>-<hash>.pth`) in the torch hub cache."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(glob.glob(str(cache / f"{backbone}-*.pth")))
    if not found:
        raise FileNotFoundError(
            f"pretrained: 'cache' found no ImageNet weights for {backbone} in {cache} "
            f"(expected {backbone}-<hash>.pth). dncml never downloads: copy torchvision's file there "
            f"(or set TORCH_HOME), or give pretrained: /path/to/weights.pth"
        )
    return Path(found[-1])


def train_classifier(config: PretrainConfig, cache_dir: Path | None = None, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Train GlyphNet + a linear head on the pre-training classes; return the backbone's state
    dict (tensors only) and the provenance (classes, epochs, accuracies, time, versions)."""
    from tqdm import tqdm

    started = time.perf_counter()
    data = load_pretraining_set(config.data, cache_dir, progress)
    images = torch.from_numpy(data["images"]).unsqueeze(1)  # uint8 (n, 1, H, W), scaled per batch
    labels = torch.from_numpy(data["labels"])
    num_classes = len(data["code_points"])
    # One image per class held out (its last rendering: an augmented view) to report accuracy.
    last = np.r_[np.flatnonzero(np.diff(data["labels"])), len(labels) - 1]
    held_out = torch.from_numpy(last)
    train_index = torch.from_numpy(np.setdiff1d(np.arange(len(labels)), last))

    torch.manual_seed(config.seed)
    backbone = GlyphNet(1)
    head = nn.Linear(backbone.feature_dim, num_classes)
    model = nn.Sequential(backbone, head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(train_index) + config.batch_size - 1) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    train_accuracy = 0.0
    for epoch in range(config.epochs):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        correct = 0
        bar = tqdm(
            order.split(config.batch_size),
            desc=f"pre-training GlyphNet, epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not progress,
        )
        for batch in bar:
            logits = model(_scaled(images[batch]))
            loss = F.cross_entropy(logits, labels[batch], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == labels[batch]).sum())
        train_accuracy = correct / len(order)
        log.info("pre-training epoch %d/%d: train accuracy %.3f", epoch + 1, config.epochs, train_accuracy)
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(_scaled(images[b])).argmax(1) for b in held_out.split(1024)])
    held_out_accuracy = float((predicted == labels[held_out]).float().mean())
    provenance = {
        "config": asdict(config),
        "classes": num_classes,
        "images": int(len(labels)),
        "code_points_sha256": hashlib.sha256(data["code_points"].tobytes()).hexdigest(),
        "train_accuracy": train_accuracy,
        "held_out_accuracy": held_out_accuracy,
        "held_out": "one augmented image per class",
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    log.info("pre-trained GlyphNet on %d classes: held-out accuracy %.3f", num_classes, held_out_accuracy)
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}, provenance


def _scaled(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1], the same input scaling as the `glyphs` training images."""
    return images.float().div_(127.5).sub_(1.0)
