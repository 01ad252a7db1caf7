"""Registries: what validation allows is exactly what construction builds, for datasets,
backbones and losses."""

from __future__ import annotations

import pytest
import torch

from dncml.trainers import registry
from dncml.trainers import spec as runspec
from dncml.trainers.backbones import build_backbone
from dncml.trainers.losses import build_loss
from dncml.trainers.spec import SpecError, from_dict


@pytest.mark.parametrize("kind", [registry.DATASETS, registry.BACKBONES, registry.LOSSES], ids=lambda r: r.kind)
def test_every_declared_name_has_a_builder_and_no_builder_is_undeclared(kind):
    for name in kind.names():
        assert callable(kind.builder(name)), name
    assert set(kind._builders) == set(kind.names())
    with pytest.raises(KeyError, match="not declared"):
        kind.register("not-a-" + kind.kind)(lambda *a: None)


def test_validation_reads_the_registries():
    assert registry.DATASETS.names() == runspec.DATASETS
    assert registry.BACKBONES.names() == runspec.BACKBONES and registry.LOSSES.names() == runspec.LOSSES
    with pytest.raises(SpecError, match="allowed values are " + ", ".join(registry.LOSSES.names())):
        from_dict({"loss": "hinge"})


@pytest.mark.parametrize("backbone", registry.BACKBONES.names())
def test_every_backbone_validation_allows_builds(backbone):
    spec = from_dict({"backbone": backbone, "image_size": 32, "glyph_classes": 48})
    net = build_backbone(spec.backbone, in_channels=1)
    features = net(torch.zeros(2, 1, 32, 32))
    assert features.shape == (2, net.feature_dim)


@pytest.mark.parametrize("loss", registry.LOSSES.names())
def test_every_loss_validation_allows_builds(loss):
    module = build_loss(loss, embedding_size=8, num_classes=4)
    embeddings = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    assert torch.isfinite(module(embeddings, torch.arange(4).repeat(2)))


def test_every_dataset_reports_the_metrics_the_registry_declares():
    from dncml.trainers.metric_keys import metric_names

    for name in registry.DATASETS.names():
        info = registry.DATASETS.info(name)
        spec = from_dict({"dataset": name, "data_root": "/nowhere"} if info.needs_root else {"dataset": name})
        names = metric_names(spec)
        assert f"{info.test_sets[0]}_recall@{info.recall_ks[0]}" in names and "val_map@r" in names


# Tiny data for every declared dataset, in the layout its reader reads (the fixtures of the readers' tests).
def _tiny_data(name: str, root) -> dict:
    from test_benchmarks import make_cars, make_cub, make_inshop, make_sop, make_vehicleid
    from test_folder import make_folder

    makers = {
        "cub": make_cub,
        "cars": make_cars,
        "sop": make_sop,
        "inshop": make_inshop,
        "vehicleid": make_vehicleid,
        "folder": make_folder,
    }
    if registry.DATASETS.info(name).embedded:
        return {"glyph_classes": 16, "glyph_instances": 12}
    return {"data_root": str(makers[name](root))}


@pytest.mark.parametrize("name", registry.DATASETS.names())
def test_every_reader_produces_what_its_declaration_says_and_evaluation_the_predicted_names(name, tmp_path, monkeypatch):
    """The reader's evaluation sets are the declared test sets with the declared Recall@K, and the
    keys evaluation returns on them are exactly the metric names predicted before reading."""
    import numpy as np

    from dncml.trainers import embedding
    from dncml.trainers.data.loading import load_dataset
    from dncml.trainers.metric_keys import metric_names

    info = registry.DATASETS.info(name)
    spec = from_dict({"dataset": name, "val_fraction": 0.5, **_tiny_data(name, tmp_path / name)})
    bundle = load_dataset(spec, cache_dir=tmp_path / "cache", progress=False)
    assert bundle.name == name and bundle.recall_ks == info.recall_ks
    assert tuple(test.name for test in bundle.tests) == info.test_sets
    assert all(test.recall_ks == info.recall_ks for test in [*bundle.tests, bundle.val])
    assert bundle.train.has_groups == info.has_groups and bundle.channels == info.channels
    rng = np.random.default_rng(0)
    monkeypatch.setattr(embedding, "embed_split", lambda net, split, spec, device: rng.normal(size=(len(split), 8)).astype(np.float32))
    reported = embedding.evaluate(None, bundle, spec, torch.device("cpu"))
    assert list(reported) == metric_names(spec)


@pytest.fixture
def toy_dataset():
    """A dataset added the documented way (CONTRIBUTING.md, "How to add a dataset"): one
    declaration and one registered reader; withdrawn afterwards."""
    import numpy as np

    from dncml.trainers.data.base import DatasetBundle, EvalSet, ImageSplit, require_dir

    registry.DATASETS.declare("toy", recall_ks=(1, 3), test_sets=("test",), needs_root=True, image_size=32, title="toy squares")

    @registry.DATASETS.register("toy")
    def read_toy(root, seed: int = 0) -> DatasetBundle:
        files = sorted(str(p) for p in require_dir(root, "toy images").glob("*.png"))
        labels = [int(path.rsplit("/", 1)[1].split("_")[0]) for path in files]
        train = [i for i, label in enumerate(labels) if label < 8]
        test = [i for i, label in enumerate(labels) if label >= 8]

        def split(name, indices):
            return ImageSplit(name, labels=np.array(labels)[indices], paths=[files[i] for i in indices])

        ks = registry.DATASETS.info("toy").recall_ks
        return DatasetBundle("toy", train=split("train", train), tests=[EvalSet("test", split("test", test), None, ks)], recall_ks=ks)

    yield read_toy
    registry.DATASETS.withdraw("toy")
    assert "toy" not in registry.DATASETS


def test_a_toy_dataset_added_by_one_declaration_and_one_reader(toy_dataset, tmp_path):
    import numpy as np
    from PIL import Image

    from dncml.trainers.data.loading import load_dataset
    from dncml.trainers.metric_keys import metric_names

    for label in range(12):
        for copy in range(3):
            Image.fromarray(np.full((8, 8, 3), label * 20 + copy, np.uint8)).save(tmp_path / f"{label}_{copy}.png")
    with pytest.raises(SpecError, match="'data_root' is required for dataset 'toy'"):
        from_dict({"dataset": "toy"})
    spec = from_dict({"dataset": "toy", "data_root": str(tmp_path), "selection_metric": "val_recall@3"})
    assert spec.resolved_image_size == 32
    assert metric_names(spec) == [
        *("val_recall@1", "val_recall@3", "val_nmi", "val_map@r"),
        *("test_recall@1", "test_recall@3", "test_nmi", "test_map@r"),
    ]
    with pytest.raises(SpecError, match="reports val_recall@1, val_recall@3, val_nmi, val_map@r"):
        from_dict({"dataset": "toy", "data_root": str(tmp_path), "selection_metric": "val_recall@8"})
    bundle = load_dataset(spec, progress=False)
    assert bundle.train.num_classes + bundle.val.query.num_classes == 8 and bundle.tests[0].query.num_classes == 4
    assert bundle.val.recall_ks == (1, 3) and len(bundle.train) + len(bundle.val.query) == 24
