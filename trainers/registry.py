"""Name -> builder registries for datasets, backbones and losses (as timm's `register_model` /
`create_model`), read by both validation (`spec.py`) and construction.

A registry *declares* its names and what validation needs to know about each (a dataset's
Recall@K, a backbone's named weights) here, in a light module that imports no torch, so a spec
is checked in a fraction of a second; the builders register themselves with a decorator in the
module that holds them (`backbones.py`, `losses.py`, the dataset readers), which `create` imports on
first use. A builder for an undeclared name, or a declared name without a builder, is an error:
what validation allows is exactly what construction builds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind, self.modules = kind, modules
        self._info: dict[str, dict[str, Any]] = {}
        self._builders: dict[str, Callable] = {}

    def declare(self, name: str, **info: Any) -> None:
        self._info[name] = info

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: `fn` builds the declared `name`."""

        def decorate(fn: Callable) -> Callable:
            if name not in self._info:
                raise KeyError(f"{self.kind} {name!r} has a builder but is not declared in dncml.trainers.registry")
            self._builders[name] = fn
            return fn

        return decorate

    def names(self) -> tuple[str, ...]:
        return tuple(self._info)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def info(self, name: str) -> dict[str, Any]:
        if name not in self._info:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self._info)}")
        return self._info[name]

    def builder(self, name: str) -> Callable:
        self.info(name)
        if name not in self._builders:
            for module in self.modules:
                importlib.import_module(module)
        if name not in self._builders:
            raise KeyError(f"{self.kind} {name!r} is declared but no module registers a builder for it")
        return self._builders[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.builder(name)(*args, **kwargs)


DATASETS = Registry(
    "dataset",
    ("dncml.trainers.data.glyphs", "dncml.trainers.data.glyph_families", "dncml.trainers.data.benchmarks", "dncml.trainers.data.folder"),
)
# test_sets: the prefixes of the evaluation metrics besides `val` (VehicleID has three test sizes).
DATASETS.declare("glyphs", recall_ks=(1, 2, 4, 8), test_sets=("test",), groups=True, needs_root=False, image_size=32)
# the SOP-shaped testbed: a class is (code point, type family) of the glyphs render (glyph_families.py)
DATASETS.declare("glyph_families", recall_ks=(1, 2, 4, 8), test_sets=("test",), groups=True, needs_root=False, image_size=32)
DATASETS.declare("folder", recall_ks=(1, 2, 4, 8), test_sets=("test",), groups=False, needs_root=True, image_size=224)
DATASETS.declare("cub", recall_ks=(1, 2, 4, 8), test_sets=("test",), groups=False, needs_root=True, image_size=224)
DATASETS.declare("cars", recall_ks=(1, 2, 4, 8), test_sets=("test",), groups=False, needs_root=True, image_size=224)
DATASETS.declare("sop", recall_ks=(1, 10, 100, 1000), test_sets=("test",), groups=True, needs_root=True, image_size=224)
DATASETS.declare("inshop", recall_ks=(1, 10, 20, 30, 50), test_sets=("test",), groups=False, needs_root=True, image_size=224)
DATASETS.declare(
    "vehicleid", recall_ks=(1, 5), test_sets=("test_small", "test_medium", "test_large"), groups=False, needs_root=True, image_size=224
)

BACKBONES = Registry("backbone", ("dncml.trainers.backbones",))
# pretrained: the named weights a backbone takes besides a local file ("cache": torchvision's
# ImageNet file in $TORCH_HOME; "glyphs": GlyphNet pre-trained on glyph classes outside train/test).
BACKBONES.declare("glyphnet", pretrained=("glyphs",), min_image_size=16)
BACKBONES.declare("resnet18", pretrained=("cache",), min_image_size=32)
BACKBONES.declare("resnet50", pretrained=("cache",), min_image_size=32)

LOSSES = Registry("loss", ("dncml.trainers.losses",))
for _name in ("margin", "triplet", "proxynca", "multisimilarity", "normsoftmax", "arcface", "contrastive"):
    LOSSES.declare(_name)
