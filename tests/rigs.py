"""Tiny training rigs, shared by the trainer tests and tests/benchmarks/bench_trainer.py: a small
RunSpec on rendered glyphs (16x16, a few dozen classes, CPU), an in-process training run through
the local seam, and the checks every tiny run passes. Tests import it as `rigs` (tests/ is on
their path, as for local_s3); a bench script puts tests/ on sys.path first."""

from __future__ import annotations

import math

import torch

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers.checkpoints import load_checkpoint
from dncml.trainers.seam import Seam
from dncml.trainers.spec import from_dict

# Full field names (no aliases such as d or m), so that a change given to tiny() replaces them.
TINY = dict(
    glyph_classes=48,
    glyph_instances=12,
    image_size=16,
    embedding_dim=32,
    batch_size=16,
    samples_per_class=4,
    K=4,
    T=1,
    warmup_epochs=0,
    epochs=2,
    finetune_epochs=1,
    lr=1e-3,
    lr_embedding=1e-3,
    steps_per_epoch=3,
    kmeans_iterations=10,
)


def tiny(**changes):
    """The tiny RunSpec, with `changes` to TINY."""
    return from_dict({**TINY, **changes})


def train_locally(spec, root, data=None, report=None, resume_from=None):
    """Train in-process through the local seam, checkpoints written under `root`; `report` gets
    (metrics, checkpoint) after every epoch. Returns the final training state."""
    seam = Seam(report=report or (lambda metrics, checkpoint: None), checkpoint_root=str(root), resume_from=resume_from)
    return dnc.train(spec, seam, data)


def run(spec, root, data=None, resume_from=None, report=None):
    """Train in-process; returns (reported metrics, final state, final model state_dict)."""
    history, checkpoints = [], []

    def reporter(metrics, checkpoint):
        history.append(metrics)
        checkpoints.append(checkpoint)
        if report is not None:
            report(metrics, checkpoint)

    state = train_locally(spec, root, data, report=reporter, resume_from=resume_from)
    return history, state, load_checkpoint(checkpoints[-1])["model"]


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different}"


def batch(num_classes=4, m=4, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(m)
    # Images that depend on the class, so metric losses have something to pull together.
    prototypes = torch.randn(num_classes, 1, size, size, generator=generator)
    images = prototypes[labels] + 0.5 * torch.randn(len(labels), 1, size, size, generator=generator)
    return images, labels


EPOCH_KEYS = {
    "epoch",
    "total_epochs",
    "phase",
    "active_learners",
    "assignment_version",
    "loss",
    "steps",
    "train_seconds",
    "images_per_second",
    "lr",
    "best_epoch",
    "best_val_recall@1",
    "epoch_seconds",
}
EVAL_KEYS = {
    f"{split}_{metric}" for split in ("val", "test") for metric in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
}
ROUND_KEYS = {"reclustered", "cluster_seconds", "embed_seconds", "kmeans_seconds", "cluster_sizes"}


def check_run(history, spec):
    assert len(history) == spec.total_epochs
    for epoch, metrics in enumerate(history):
        assert metrics.keys() >= EPOCH_KEYS, EPOCH_KEYS - metrics.keys()
        assert math.isfinite(metrics["loss"]), metrics
        assert metrics["steps"] == spec.steps_per_epoch
        assert metrics["phase"] == spec.plan.phase(epoch)
        if spec.plan.reclusters_at(epoch):
            assert metrics.keys() >= ROUND_KEYS
    assert history[-1].keys() >= EVAL_KEYS
    assert all(math.isfinite(history[-1][key]) for key in EVAL_KEYS)
