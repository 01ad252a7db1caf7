"""`recipe: paper | authors_code`: each choice of the authors' public code, checked on its own
(the one-parameter embedding, round-robin learners, the fixed beta and nearest negatives, the
clustering inputs, frozen BatchNorm statistics, the Xavier init and dropout, the full-embedding
phase), and `paper` left as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rigs import batch, tiny, train_locally

from dncml.trainers.grouping import repair
from dncml.trainers.losses import NearestNegativesMiner
from dncml.trainers.model import DivideAndConquerNet
from dncml.trainers.runtime import make_optimizer
from dncml.trainers.sampler import ClusterBatchSampler
from dncml.trainers.spec import RECIPE_SETTINGS, SpecError, field_help

pytestmark = pytest.mark.usefixtures("one_thread")


def train(spec, root, data):
    history = []
    train_locally(spec, root, data, report=lambda metrics, checkpoint: history.append(metrics))
    return history


# ================================================================================ the spec


def test_the_recipe_sets_each_field_and_a_given_field_wins():
    paper, authors = tiny(), tiny(recipe="authors_code")
    for name, value in RECIPE_SETTINGS["authors_code"].items():
        assert authors.setting(name) == value, name
        assert paper.setting(name) == RECIPE_SETTINGS["paper"][name], name
    assert authors.setting("learn_beta") is False and paper.setting("learn_beta") is True
    assert tiny(recipe="authors_code", learner_schedule="uniform").setting("learner_schedule") == "uniform"
    assert tiny(recipe="authors_code").to_dict()["recipe"] == "authors_code"  # a column of every trial row
    with pytest.raises(SpecError, match="'recipe' = 'authors'.*paper, authors_code"):
        tiny(recipe="authors")
    with pytest.raises(SpecError, match="'negatives' = 'hardest'"):
        tiny(negatives="hardest")
    with pytest.raises(SpecError, match="'embedding_dropout'"):
        tiny(embedding_dropout=1.5)
    help_text = field_help()
    assert "paper, authors_code" in help_text["recipe"]
    assert "authors_code: 'round_robin'" in help_text["learner_schedule"]


def test_the_full_embedding_phase_follows_the_authors_rule():
    # their command: finetune epoch 190, full embedding from epoch 80 (epoch >= 190 x 8 / 19)
    assert tiny(recipe="authors_code", epochs=190, finetune_epochs=10).plan.full_embedding_from == 80
    assert tiny(recipe="authors_code", epochs=75, finetune_epochs=5).plan.full_embedding_from == 32  # 75 x 8 / 19 = 31.6
    assert tiny(epochs=75, finetune_epochs=5).plan.full_embedding_from is None  # paper: never
    assert tiny(recipe="authors_code", epochs=75, full_embedding_from=70).plan.full_embedding_from == 70
    plan = tiny(recipe="authors_code", epochs=5, finetune_epochs=1).plan
    assert [plan.full_embedding_at(e) for e in range(6)] == [False, False, False, True, True, True]


def test_batchnorm_statistics_frozen_affine_trained(tiny_data):
    assert tiny(recipe="authors_code", pretrained="glyphs").resolved_freeze_bn == "stats"
    assert tiny(pretrained="glyphs").resolved_freeze_bn == "all"
    spec = tiny(recipe="authors_code", freeze_bn="stats")
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8).train()
    optimizer, _ = make_optimizer(spec, net)
    bn = net._batch_norms()[0]
    before = bn.running_mean.clone(), bn.running_var.clone(), bn.weight.detach().clone()
    images, labels = batch()
    for _ in range(2):
        optimizer.zero_grad()
        net(images, labels, (0, 4))[0].backward()
        optimizer.step()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert not torch.equal(bn.weight, before[2])


# ======================================================================== the embedding layer


def learner_step(net, optimizer, images, labels, block):
    optimizer.zero_grad(set_to_none=True)
    net(images, labels, block)[0].backward()
    optimizer.step()


@pytest.mark.parametrize("recipe", ["paper", "authors_code"])
def test_a_learner_k_step_moves_the_other_slices_only_under_one_parameter(recipe):
    spec = tiny(recipe=recipe, embedding_dropout=0.0)  # no dropout: the same step in both recipes
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8)
    optimizer, _ = make_optimizer(spec, net)
    images, labels = batch()
    for k in range(4):  # every slice gets Adam momentum
        learner_step(net, optimizer, images, labels, (k, k + 1))

    def rows():
        layers = [net.embedding] if recipe == "authors_code" else net.learner_layers
        return torch.cat([layer.weight for layer in layers]).detach().clone()

    weights = rows()
    learner_step(net, optimizer, images, labels, (1, 2))
    after = rows()
    moved = [not torch.equal(weights[8 * k : 8 * (k + 1)], after[8 * k : 8 * (k + 1)]) for k in range(4)]
    assert moved == ([True] * 4 if recipe == "authors_code" else [False, True, False, False]), moved
    if recipe == "authors_code":
        assert len(net.parameter_groups()["embedding"]) == 2  # one weight, one bias: one parameter for Adam
        assert net.embedding.weight.grad[:8].abs().sum() == 0  # learner 0's rows: a zero gradient


def test_xavier_normal_per_slice_and_dropout_before_the_embedding():
    spec = tiny(recipe="authors_code", embedding_dim=64, K=2)
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8)
    expected = math.sqrt(2.0 / (128 + 32))  # xavier_normal_ of a (d/K = 32, m = 128) slice
    for k in range(2):
        std = float(net.embedding.weight[32 * k : 32 * (k + 1)].detach().std())
        assert abs(std - expected) < 0.05 * expected, (k, std, expected)
    assert isinstance(net.dropout, torch.nn.Dropout) and net.dropout.p == 0.01
    assert DivideAndConquerNet(tiny(), 1, 8).dropout is None
    # the same seed, another K: the same draws, only each slice's scale differs
    torch.manual_seed(0)
    other = DivideAndConquerNet(spec.replace(K=4), 1, 8)
    ratio = other.embedding.weight / net.embedding.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt((128 + 32) / (128 + 16))))


# ========================================================================== learners in turn


def test_round_robin_gives_every_learner_the_same_steps():
    labels = np.repeat(np.arange(30), 4)  # 30 classes x 4
    clusters = np.repeat(np.array([0] * 20 + [1] * 6 + [2] * 4), 4)  # 80, 24 and 16 samples
    sampler = ClusterBatchSampler(labels, batch_size=8, samples_per_class=4, seed=0)
    sampler.set_assignment(clusters, 3)
    assert sampler.round_robin_steps() == 3 * (80 // 8)
    steps = sampler.epoch(0, sampler.round_robin_steps(), "round_robin")
    assert [s.cluster for s in steps] == [0, 1, 2] * 10
    for step in steps:  # the small clusters are drawn from again and again: oversampled
        assert set(clusters[step.global_indices]) == {step.cluster}
    uniform = sampler.epoch(0, 30)
    assert len({s.cluster for s in uniform}) == 3 and [s.cluster for s in uniform] != [0, 1, 2] * 10


def test_an_authors_code_run_records_its_steps(tmp_path, tiny_data):
    spec = tiny(recipe="authors_code", steps_per_epoch=None, epochs=1, finetune_epochs=1, batch_size=64)
    history = train(spec, tmp_path, tiny_data)
    n = len(tiny_data.train)
    assert history[1]["steps"] == n // 64  # conquer: one cluster, all data
    assert history[0]["steps"] % 4 == 0 and history[0]["steps"] >= 4  # K x the largest cluster's batches
    assert [h["train_steps"] for h in history] == [history[0]["steps"], history[0]["steps"] + history[1]["steps"]]
    assert history[0]["full_embedding"] is False and history[1]["full_embedding"] is True


# =============================================================================== the loss


def test_nearest_negatives_at_least_the_cutoff_away():
    torch.manual_seed(0)
    labels = torch.arange(6).repeat_interleave(4)
    embeddings = torch.nn.functional.normalize(torch.randn(24, 8), dim=1)
    anchors, positives, negatives = NearestNegativesMiner(cutoff=0.5)(embeddings, labels)
    distances = torch.cdist(embeddings, embeddings)
    assert len(anchors) == 24 * 3  # every (anchor, positive) pair, m - 1 negatives per anchor
    assert (labels[anchors] == labels[positives]).all() and (anchors != positives).all()
    assert (labels[anchors] != labels[negatives]).all()
    for a in range(24):
        chosen = set(negatives[anchors == a].tolist())
        candidates = [j for j in range(24) if labels[j] != labels[a] and distances[a, j] >= 0.5]
        nearest = sorted(candidates, key=lambda j: float(distances[a, j]))[:3]
        assert chosen == set(nearest), a


def test_beta_stays_fixed_under_authors_code():
    spec = tiny(recipe="authors_code")
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 8)
    optimizer, _ = make_optimizer(spec, net)
    beta = net.losses["1-2"].loss.beta
    assert not isinstance(beta, torch.nn.Parameter) and float(beta) == pytest.approx(1.2)
    assert isinstance(net.losses["1-2"].miner, NearestNegativesMiner)
    images, labels = batch()
    learner_step(net, optimizer, images, labels, (1, 2))
    assert float(net.losses["1-2"].loss.beta) == pytest.approx(1.2)
    learned = DivideAndConquerNet(tiny(), 1, 8).losses["1-2"].loss.beta
    assert isinstance(learned, torch.nn.Parameter)  # paper: beta is learned


# ============================================================================== clustering


def test_a_class_alone_in_its_cluster_sits_the_round_out():
    labels = np.repeat(np.arange(6), 4)
    clusters = np.repeat(np.array([0, 0, 0, 1, 1, 1]), 4)
    clusters[0] = 1  # one image of class 0 strays into cluster 1
    moved, count = repair(clusters, labels, 2)
    assert moved[0] == 0 and count == 1  # paper: it joins its class's cluster
    kept, count = repair(clusters, labels, 2, move_strays=False)
    assert kept[0] == 1 and count == 0  # authors_code: it stays ...
    sampler = ClusterBatchSampler(labels, batch_size=8, samples_per_class=4, seed=0)
    sampler.set_assignment(kept, 2)
    drawn = np.concatenate([s.global_indices for s in sampler.epoch(0, 20)])
    assert 0 not in drawn  # ... and is never drawn this round
    assert tiny(recipe="authors_code").setting("cluster_space") == "backbone"
