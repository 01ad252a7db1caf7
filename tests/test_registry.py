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
    from dncml.trainers.data.loading import metric_names

    for name in registry.DATASETS.names():
        info = registry.DATASETS.info(name)
        spec = from_dict({"dataset": name, "data_root": "/nowhere"} if info["needs_root"] else {"dataset": name})
        names = metric_names(spec)
        assert f"{info['test_sets'][0]}_recall@{info['recall_ks'][0]}" in names and "val_map@r" in names
