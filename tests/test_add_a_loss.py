"""CONTRIBUTING.md's "How to add a loss", followed: a toy loss declared in `LOSSES`, its builder
registered with `@LOSSES.register`, is what a RunSpec's `loss:` builds, and a tiny local run
trains with it. The registry is left as it was."""

from __future__ import annotations

import os

import pytest
import torch
from pytorch_metric_learning import losses

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers import spec as runspec
from dncml.trainers.losses import LearnerLoss, build_loss
from dncml.trainers.registry import LOSSES
from dncml.trainers.seam import Seam

TOY = "toy_circle"


@pytest.fixture()
def toy_loss(monkeypatch):
    """Declare and register the toy loss; monkeypatch undoes both (validation reads the registry's
    names when it runs, so nothing else needs patching)."""
    calls = {"built": 0, "forward": 0}

    class Counted(LearnerLoss):
        def forward(self, embeddings, labels):
            calls["forward"] += 1
            return super().forward(embeddings, labels)

    # copies of the registry's tables, which monkeypatch puts back afterwards
    monkeypatch.setattr(LOSSES, "_info", dict(LOSSES._info))
    monkeypatch.setattr(LOSSES, "_builders", dict(LOSSES._builders))

    # step 1 (registry.py): the declaration
    LOSSES.declare(TOY)

    # step 2 (losses.py): the builder, one instance per learner, sized for its slice
    @LOSSES.register(TOY)
    def toy_circle_loss(embedding_size, num_classes, **_):
        calls["built"] += 1
        return Counted(losses.CircleLoss(m=0.4, gamma=80))

    return calls


def test_a_registered_loss_is_validated_built_and_trained(toy_loss, tmp_path, monkeypatch):
    monkeypatch.setenv("DNCML_CACHE", os.environ.get("DNCML_CACHE") or str(tmp_path / "cache"))
    module = build_loss(TOY, embedding_size=8, num_classes=4)
    embeddings = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    assert torch.isfinite(module(embeddings, torch.arange(4).repeat(2)))

    spec = runspec.from_dict(
        {
            "loss": TOY,
            "glyph_classes": 48,
            "glyph_instances": 12,
            "image_size": 16,
            "embedding_dim": 16,
            "batch_size": 16,
            "samples_per_class": 4,
            "K": 2,
            "T": 1,
            "warmup_epochs": 0,
            "epochs": 1,
            "finetune_epochs": 0,
            "steps_per_epoch": 1,
            "kmeans_iterations": 5,
        }
    )
    reported = []
    dnc.train(spec, Seam(report=lambda metrics, checkpoint: reported.append(metrics), checkpoint_root=str(tmp_path / "ck")))
    assert toy_loss["built"] >= spec.num_learners  # one instance per learner
    assert toy_loss["forward"] >= 1  # the step ran through it
    assert len(reported) == 1 and torch.isfinite(torch.tensor(float(reported[0]["loss"])))


def test_the_registry_is_back_as_it_was():
    """After the toy test (any order): only the shipped losses, and validation refuses the toy."""
    assert TOY not in LOSSES and TOY not in LOSSES._builders and TOY not in runspec.choices()["loss"]
    with pytest.raises(runspec.SpecError):
        runspec.from_dict({"loss": TOY})
