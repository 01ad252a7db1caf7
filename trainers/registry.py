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
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the CLI, validation and the readers need to know about one dataset, declared once.

    recall_ks: the Recall@K its evaluation reports; test_sets: the names of its test EvalSets
    (the prefixes of their metrics; VehicleID has three sizes); has_groups: its training images
    carry ground-truth group labels (`grouping: gt_labels`); needs_root: read from files under
    `data_root` (`--root`); the others are embedded (rendered here, `dncml datasets prepare`);
    image_size: the default `image_size`; max_image_size: the largest one allowed, where it is
    below validation's general bound (a rendered dataset: beyond it the render cache alone is
    gigabytes); channels: 1 grayscale, 3 RGB.
    title, archive, homepage: what `dncml datasets list` shows; required_files: paths under the
    root that the main layout needs (folders end with "/"), alt_layouts: other accepted layouts;
    expected_classes: the full release's class count per `DatasetBundle.summary()` row ("train",
    "test/query", ...), only for warnings in `datasets check`.
    """

    name: str
    recall_ks: tuple[int, ...]
    needs_root: bool
    image_size: int
    title: str
    test_sets: tuple[str, ...] = ("test",)
    has_groups: bool = False
    max_image_size: int | None = None
    channels: int = 3
    archive: str = ""
    homepage: str = ""
    required_files: tuple[str, ...] = ()
    alt_layouts: tuple[tuple[str, ...], ...] = ()
    expected_classes: dict[str, int] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """Rendered here (nothing to download), not read from an archive."""
        return not self.needs_root

    @property
    def reader(self) -> Callable:
        """The registered reader: `reader(root, seed=0)` for a dataset with a root, else
        `reader(spec, progress=True, cache_dir=None)` (see CONTRIBUTING.md, "How to add a dataset")."""
        return DATASETS.builder(self.name)

    def layouts(self) -> tuple[tuple[str, ...], ...]:
        return (self.required_files,) + self.alt_layouts

    def missing_files(self, root: str | os.PathLike) -> list[str]:
        """[] if some accepted layout is complete under root, else the main layout's missing paths."""
        base = Path(os.path.expanduser(os.fspath(root)))

        def missing(layout: tuple[str, ...]) -> list[str]:
            return [rel for rel in layout if not ((base / rel.rstrip("/")).is_dir() if rel.endswith("/") else (base / rel).is_file())]

        results = [missing(layout) for layout in self.layouts()]
        return [] if any(not m for m in results) else results[0]


class DatasetRegistry(Registry):
    """The datasets: `declare` takes a `DatasetInfo`'s fields (an unknown or missing one is a
    TypeError), `info` returns the `DatasetInfo`."""

    def declare(self, name: str, **info: Any) -> None:
        self._info[name] = DatasetInfo(name=name, **info)

    def info(self, name: str) -> DatasetInfo:
        return super().info(name)

    def withdraw(self, name: str) -> None:
        """Forget a declaration and its reader (a test's toy dataset)."""
        self._info.pop(name, None)
        self._builders.pop(name, None)


DATASETS = DatasetRegistry(
    "dataset",
    ("dncml.trainers.data.glyphs", "dncml.trainers.data.glyph_families", "dncml.trainers.data.benchmarks", "dncml.trainers.data.folder"),
)
_KS_TO_8 = (1, 2, 4, 8)  # CUB's and Cars' Recall@K in the paper; glyphs and folder take them too
# both glyph datasets are views of one render: grayscale, group labels (scripts), at most 256 pixels
_GLYPH_RENDER = {"recall_ks": _KS_TO_8, "has_groups": True, "needs_root": False, "image_size": 32, "max_image_size": 256, "channels": 1}
_PHOTOS = {"needs_root": True, "image_size": 224}  # read from files, the paper's 224 crops
DATASETS.declare(
    "glyphs",
    **_GLYPH_RENDER,
    title="embedded default: Unicode code points x 12 DejaVu faces shipped with matplotlib; group labels: Unicode script / block",
)
# the SOP-shaped testbed: a class is (code point, type family) of the glyphs render (glyph_families.py)
DATASETS.declare(
    "glyph_families",
    **_GLYPH_RENDER,
    title="embedded, shaped like SOP: a class = (code point, DejaVu family: Sans, Serif, Mono), its 4 faces x "
    "(glyph_instances / 12) images; the glyphs render relabelled (the same cache); group labels: Unicode script / block",
)
DATASETS.declare(
    "cub",
    recall_ks=_KS_TO_8,
    **_PHOTOS,
    title="CUB-200-2011 (birds, 200 classes)",
    archive="CUB_200_2011.tgz -> CUB_200_2011/ (pass that folder or its parent)",
    homepage="https://www.vision.caltech.edu/datasets/cub_200_2011/",
    required_files=("images.txt", "image_class_labels.txt", "images/"),
    alt_layouts=(("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/images/"),),
    expected_classes={"train": 100, "test/query": 100},
)
DATASETS.declare(
    "cars",
    recall_ks=_KS_TO_8,
    **_PHOTOS,
    title="Stanford Cars / Cars196 (196 car models)",
    archive="car_ims.tgz -> car_ims/, plus cars_annos.mat next to it "
    "(or the devkit layout: devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat)",
    homepage="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    required_files=("cars_annos.mat", "car_ims/"),
    alt_layouts=(
        ("devkit/cars_train_annos.mat", "cars_train/", "cars_test_annos_withlabels.mat", "cars_test/"),
        ("devkit/cars_train_annos.mat", "cars_train/", "devkit/cars_test_annos_withlabels.mat", "cars_test/"),
    ),
    expected_classes={"train": 98, "test/query": 98},
)
DATASETS.declare(
    "sop",
    recall_ks=(1, 10, 100, 1000),
    has_groups=True,
    **_PHOTOS,
    title="Stanford Online Products (22,634 products in 12 super-classes)",
    archive="Stanford_Online_Products.zip -> Stanford_Online_Products/",
    homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
    required_files=("Ebay_train.txt", "Ebay_test.txt"),
    expected_classes={"train": 11318, "test/query": 11316},
)
DATASETS.declare(
    "inshop",
    recall_ks=(1, 10, 20, 30, 50),
    **_PHOTOS,
    title="DeepFashion In-shop Clothes Retrieval (7,982 items)",
    archive="In-shop Clothes Retrieval Benchmark: Img/img.zip -> img/, plus "
    "Eval/list_eval_partition.txt (either at the root or under Eval/)",
    homepage="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
    required_files=("list_eval_partition.txt", "img/"),
    alt_layouts=(
        ("Eval/list_eval_partition.txt", "img/"),
        ("Eval/list_eval_partition.txt", "Img/img/"),
        ("list_eval_partition.txt", "Img/img/"),
    ),
    expected_classes={"train": 3997, "test/query": 3985, "test/gallery": 3985},
)
DATASETS.declare(
    "vehicleid",
    recall_ks=(1, 5),
    test_sets=("test_small", "test_medium", "test_large"),
    **_PHOTOS,
    title="PKU VehicleID (26,267 vehicles)",
    archive="VehicleID_V1.0 (on request from PKU) -> VehicleID_V1.0/ with image/ and train_test_split/",
    homepage="https://www.pkuml.org/resources/pku-vehicleid.html",
    required_files=(
        "image/",
        "train_test_split/train_list.txt",
        "train_test_split/test_list_800.txt",
        "train_test_split/test_list_1600.txt",
        "train_test_split/test_list_2400.txt",
    ),
    expected_classes={"test_small/query": 800, "test_medium/query": 1600, "test_large/query": 2400},
)
DATASETS.declare(
    "folder",
    recall_ks=_KS_TO_8,
    **_PHOTOS,
    title="Your own images: ROOT/<class name>/<images> (class-disjoint train / test)",
    archive="any folder with one sub-folder of .jpg / .png images per class (optional ROOT/split.txt)",
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
