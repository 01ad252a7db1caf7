"""The divide-and-conquer net: gradient isolation of the learners (and Adam leaving the others
alone), the full embedding as the concatenation of separately normalised slices, the seed fixing
the initial weights, the backbone resting after re-clusterings, frozen BatchNorm of a pretrained
backbone, learned masks. Tiny rendered glyphs on CPU (tests/rigs.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rigs import assert_state_dicts_equal, batch, run, tiny

from dncml.trainers.checkpoints import load_checkpoint
from dncml.trainers.data.loading import load_dataset
from dncml.trainers.model import DivideAndConquerNet
from dncml.trainers.pretrain import resolve_weights
from dncml.trainers.runtime import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gradient_isolation_and_adam_leaves_other_learners_alone():
    spec = tiny(K=4, embedding_dim=32)
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, in_channels=1, num_classes=8)
    optimizer, _ = make_optimizer(spec, net)
    images, labels = batch()

    # A step through every learner (and the full embedding) gives Adam momentum everywhere.
    optimizer.zero_grad(set_to_none=True)
    total = sum(net(images, labels, (k, k + 1))[0] for k in range(4)) + net(images, labels, (0, 4))[0]
    total.backward()
    assert all(p.grad is not None for layer in net.learner_layers for p in layer.parameters())
    optimizer.step()

    # Learner 1 only.
    optimizer.zero_grad(set_to_none=True)
    loss, _ = net(images, labels, (1, 2))
    assert loss.item() > 0
    loss.backward()
    for k, layer in enumerate(net.learner_layers):
        for p in layer.parameters():
            if k == 1:
                assert p.grad is not None and p.grad.abs().sum() > 0
            else:
                assert p.grad is None, f"learner {k} got a gradient from learner 1's step"
    for key, loss_module in net.losses.items():
        if key != "1-2":
            assert all(p.grad is None for p in loss_module.parameters()), key
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())

    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer.step()
    after = dict(net.named_parameters())
    for k in range(4):
        for suffix in ("weight", "bias"):
            name = f"learner_layers.{k}.{suffix}"
            same = torch.equal(before[name], after[name])
            assert same == (k != 1), f"{name}: {'unchanged' if same else 'changed'}"
    for name in before:
        if name.startswith("losses.") and not name.startswith("losses.1-2."):
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["backbone.body.0.weight"], after["backbone.body.0.weight"])

    # Test time: the full embedding is the concatenation of the separately normalised slices.
    net.eval()
    with torch.no_grad():
        features = net.features(images)
        raw = [layer(features) for layer in net.learner_layers]
        expected = torch.cat([F.normalize(r, dim=1) for r in raw], dim=1)
        torch.testing.assert_close(net.embed(images), expected)
        torch.testing.assert_close(net.learner_embedding(features, (1, 2)), F.normalize(raw[1], dim=1))
        _, vectors = net(images, labels, (2, 3))  # the cluster-space vectors a training step returns
        torch.testing.assert_close(vectors, F.normalize(expected, dim=1))
    assert sum(p.numel() for p in net.learner_layers.parameters()) == (128 + 1) * 32  # independent of K


def test_full_embedding_is_the_concatenation_of_normalised_slices():
    """The authors' model: every learner's slice is L2-normalised on its own, in every use. A
    slice with a large raw norm must not dominate the full embedding (it does when the raw
    concatenation is normalised as a whole); the baseline and kmeans_nosplit stay one vector
    normalised as a whole."""
    images, labels = batch()
    split = tiny(K=4, embedding_dim=32)
    torch.manual_seed(0)
    net = DivideAndConquerNet(split, in_channels=1, num_classes=8).eval()
    with torch.no_grad():
        net.learner_layers[0].weight.mul_(100.0)  # learner 0's raw slice is now ~100x the others'
        net.learner_layers[0].bias.mul_(100.0)
        full = net.embed(images)
        slice_norms = full.reshape(len(full), 4, 8).norm(dim=2)
        torch.testing.assert_close(slice_norms, torch.ones_like(slice_norms))  # every learner counts equally
        conquer = net.learner_embedding(net.features(images), (0, 4))  # what the full-embedding loss sees
        torch.testing.assert_close(conquer, full / 2.0)  # the same direction, unit norm (sqrt(K) = 2)
    assert split.embedding_form == "slices"

    for grouping in ("none", "kmeans_nosplit"):
        whole = tiny(K=4, embedding_dim=32, grouping=grouping)
        torch.manual_seed(0)
        baseline = DivideAndConquerNet(whole, in_channels=1, num_classes=8).eval()
        with torch.no_grad():
            features = baseline.features(images)
            raw = torch.cat([layer(features) for layer in baseline.learner_layers], dim=1)
            torch.testing.assert_close(baseline.embed(images), F.normalize(raw, dim=1))
            torch.testing.assert_close(baseline.learner_embedding(features, (0, 4)), F.normalize(raw, dim=1))
        assert whole.embedding_form == "whole"


def test_the_seed_fixes_the_initial_weights(tmp_path, tiny_data):
    spec = tiny(grouping="none", epochs=1, finetune_epochs=0, steps_per_epoch=1)
    torch.manual_seed(123)  # global RNG state must not leak into the run
    first = run(spec, tmp_path / "a", tiny_data)
    torch.manual_seed(456)
    second = run(spec, tmp_path / "b", tiny_data)
    assert_state_dicts_equal(first[2], second[2])
    third = run(spec.replace(seed=1), tmp_path / "c", tiny_data)
    assert not torch.equal(first[2]["backbone.body.0.weight"], third[2]["backbone.body.0.weight"])


def test_a_seed_means_the_same_start_in_every_row(tmp_path, tiny_data):
    """The embedding is initialised once, as one d-dim layer, and sliced into the learners: the
    initial weights are the same for every K, and before the first division every grouping (split
    or not, any K) trains the same undivided model, so the warm-up epoch is identical."""
    images, labels = batch()
    initial = {}
    for k in (1, 2, 4, 8):
        torch.manual_seed(0)
        net = DivideAndConquerNet(tiny(K=k), in_channels=1, num_classes=8)
        initial[k] = torch.cat([layer.weight for layer in net.learner_layers]), torch.cat([layer.bias for layer in net.learner_layers])
        assert len(net.learner_layers) == k
    for k in (2, 4, 8):
        assert torch.equal(initial[k][0], initial[1][0]) and torch.equal(initial[k][1], initial[1][1]), k

    schedule = dict(warmup_epochs=1, epochs=1, finetune_epochs=0, steps_per_epoch=2, seed=3)
    rows = [("none", 1), ("none", 4), ("random", 4), ("gt_labels", 4), ("kmeans_nosplit", 4), ("kmeans", 4), ("kmeans", 2)]
    first = {}
    for grouping, k in rows:
        history, _, _ = run(tiny(grouping=grouping, K=k, **schedule), tmp_path / f"{grouping}-{k}", tiny_data)
        first[grouping, k] = (history[0]["loss"], history[0]["val_recall@1"], history[0]["val_map@r"])
        assert history[0]["phase"] == "warmup"
    assert len(set(first.values())) == 1, first
    assert tiny(grouping="kmeans").embedding_form == "slices"  # the split rows do divide afterwards


def test_backbone_rests_after_each_reclustering_and_full_embedding_phase(tmp_path, tiny_data):
    """TPAMI: the backbone does not move in the epoch of a re-clustering (freeze_backbone_epochs
    = 1, T = 2); the CVPR code's full-embedding phase: from `full_embedding_from` on, the loss uses
    the full embedding while batches still come from the clusters."""
    spec = tiny(T=2, epochs=4, finetune_epochs=0, freeze_backbone_epochs=1, full_embedding_from=2, steps_per_epoch=2, eval_every=10)
    snapshots = []

    def report(metrics, checkpoint):
        snapshots.append(load_checkpoint(checkpoint)["model"])

    history, _, _ = run(spec, tmp_path, tiny_data, report=report)
    assert [m["backbone_rests"] for m in history] == [True, False, True, False]
    assert [m["full_embedding"] for m in history] == [False, False, True, True]
    assert [m["active_learners"] for m in history] == [4, 4, 1, 1]  # one block: the full embedding
    assert all(m["assignment_version"] >= 0 for m in history)  # ... on the clusters' batches
    backbone = "backbone.body.0.weight"
    assert torch.equal(snapshots[1][backbone], run_initial_backbone(spec, tiny_data)[backbone]) is False
    assert torch.equal(snapshots[2][backbone], snapshots[1][backbone])  # epoch 2 re-clustered: rested
    assert not torch.equal(snapshots[3][backbone], snapshots[2][backbone])
    assert not torch.equal(snapshots[2]["learner_layers.0.weight"], snapshots[1]["learner_layers.0.weight"])


def run_initial_backbone(spec, data):
    weights = resolve_weights(spec)
    torch.manual_seed(spec.seed)
    return DivideAndConquerNet(spec, data.channels, len(np.unique(data.train.labels)), weights).state_dict()


def test_pretrained_backbone_has_frozen_batchnorm(tmp_path, tiny_data):
    """freeze_bn auto: a pretrained backbone keeps its BatchNorm statistics and affine
    parameters for the whole run (a from-scratch one trains them)."""
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    spec = tiny(backbone="resnet18", pretrained=str(weights), image_size=32, epochs=1, finetune_epochs=0, steps_per_epoch=2, eval_every=10)
    assert spec.resolved_freeze_bn == "all" and tiny().resolved_freeze_bn == "none"
    torch.manual_seed(spec.seed)
    data = load_dataset(spec, progress=False)
    before = run_initial_backbone(spec, data)
    _, _, after = run(spec, tmp_path / "run", data)
    bn = [k for k in before if ".bn1." in k or ".bn2." in k or k.startswith("backbone.net.bn1")]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn if not k.endswith("num_batches_tracked")), [
        k for k in bn if not torch.equal(before[k], after[k])
    ]
    assert not torch.equal(before["backbone.net.conv1.weight"], after["backbone.net.conv1.weight"])
    stats_only = spec.replace(freeze_bn="stats")
    _, _, after_stats = run(stats_only, tmp_path / "stats", data)
    assert torch.equal(before["backbone.net.bn1.running_mean"], after_stats["backbone.net.bn1.running_mean"])
    assert not torch.equal(before["backbone.net.bn1.weight"], after_stats["backbone.net.bn1.weight"])  # the authors' code


def test_learned_masks_start_at_ones_learn_faster_and_split_with_the_hierarchy(tmp_path, tiny_data):
    spec = tiny(
        masks="learned",
        hierarchy="binary",
        K=4,
        T=1,
        epochs=3,
        finetune_epochs=0,
        steps_per_epoch=2,
        eval_every=10,
        mask_lr_multiplier=100.0,
    )
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8)
    assert all(torch.equal(mask, torch.ones(32)) for mask in net.masks)  # the authors' init
    optimizer, _ = make_optimizer(spec, net)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["masks"] == pytest.approx(100 * spec.lr) and rates["embedding"] == spec.lr_embedding
    # K = 2 -> 4: the second child (1, 2) of parent (0, 2) starts as a copy of its parent's mask.
    with torch.no_grad():
        net.masks[0].mul_(0.5)
        net.masks[2].mul_(0.25)
    assert spec.plan.splits_at(2) and spec.plan.mask_copies(2) == [(1, 0), (3, 2)]  # the plan's sibling rule
    assert spec.plan.mask_copies(1) == [(2, 0)] and spec.plan.mask_copies(0) == []  # K = 1 -> 2; round 0 splits nothing
    copied = net.set_learner_blocks([(0, 1), (1, 2), (2, 3), (3, 4)], spec.plan.mask_copies(2))
    assert torch.equal(net.masks[1], net.masks[0]) and torch.equal(net.masks[3], net.masks[2])
    assert {id(p) for p in copied} == {id(net.masks[1]), id(net.masks[3])}
    assert net.active_masks == [0, 1, 2, 3]
    history, _, _ = run(spec, tmp_path, tiny_data)
    assert [m["active_learners"] for m in history] == [1, 2, 4]
    assert spec.embedding_form == "whole"  # masks are off at test time


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("freeze", ["none", "stats", "all"])
def test_glyphnet_forward_is_its_layers_with_frozen_batchnorm_folded(layout, freeze):
    """GlyphNet's forward (BN folded into the convolution when frozen, ReLU after the pool, the
    weights' layout kept) computes what its `body` of layers computes: outputs, the gradients of
    every trained parameter, and under `freeze_bn: none` the running statistics it updates."""
    from dncml.trainers.backbones import GlyphNet

    torch.manual_seed(0)
    net = GlyphNet(1).to(memory_format=layout)
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        with torch.no_grad():  # statistics and affine weights away from their init, so a wrong fold shows
            norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
        norm.train(freeze == "none")
        norm.weight.requires_grad_(freeze != "all"), norm.bias.requires_grad_(freeze != "all")
    twin = copy.deepcopy(net)
    images = torch.rand(16, 1, 32, 32).contiguous(memory_format=layout)

    fast, reference = net(images), twin.body(images)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(fast)
    (fast * weights).sum().backward()
    (reference * weights).sum().backward()
    trained = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    assert {name for name, _ in trained} >= {"body.0.weight", "body.4.weight", "body.8.weight"}
    assert (freeze != "all") == ("body.1.weight" in dict(trained))
    for name, parameter in trained:
        torch.testing.assert_close(parameter.grad, twin.get_parameter(name).grad, rtol=1e-4, atol=1e-5, msg=name)
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(buffer, twin.get_buffer(name), msg=name)
