"""Training runs end to end on tiny glyphs (tests/rigs.py): K = 1 equals the baseline, every
grouping, loss and option runs, a short run learns, the training-pass collection of vectors and
the expiry of the bank's vectors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from rigs import assert_state_dicts_equal, check_run, run, tiny

from dncml.trainers import divide_and_conquer as dnc
from dncml.trainers import embedding
from dncml.trainers.data.loading import load_dataset
from dncml.trainers.embedding import EmbeddingBank
from dncml.trainers.model import DivideAndConquerNet
from dncml.trainers.seam import World
from dncml.trainers.spec import GROUPINGS, LOSSES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_learner_equals_the_baseline(tmp_path, tiny_data):
    schedule = dict(K=1, T=1, epochs=2, finetune_epochs=1, seed=7)
    divided, _, divided_model = run(tiny(grouping="kmeans", **schedule), tmp_path / "a", tiny_data)
    baseline, _, baseline_model = run(tiny(grouping="none", **schedule), tmp_path / "b", tiny_data)
    assert [m["phase"] for m in divided] == ["divide", "divide", "conquer"]
    assert [m["phase"] for m in baseline] == ["baseline"] * 3
    assert [m["loss"] for m in divided] == [m["loss"] for m in baseline]
    assert_state_dicts_equal(divided_model, baseline_model)
    assert divided[-1]["test_recall@1"] == baseline[-1]["test_recall@1"]


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_every_grouping_runs(grouping, tmp_path, tiny_data):
    spec = tiny(grouping=grouping, epochs=2, finetune_epochs=1, steps_per_epoch=2, eval_every=10)
    history, _, _ = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    expected = {"none": 1, "kmeans": 4, "kmeans_nosplit": 1, "random": 4, "gt_labels": 4}[grouping]
    assert history[0]["active_learners"] == expected
    if grouping != "none":
        assert len(eval(history[0]["cluster_sizes"])) == 4


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_runs(loss, tmp_path, tiny_data):
    spec = tiny(loss=loss, epochs=1, finetune_epochs=1, steps_per_epoch=2, eval_every=10)
    history, _, model = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    assert all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point())


@pytest.mark.parametrize(
    "options",
    [
        dict(masks="learned"),
        dict(embedding_source="training_pass"),
        dict(cluster_space="backbone"),
        dict(cluster_space="backbone", embedding_source="training_pass"),
        dict(hierarchy="binary", K=2),
        dict(freeze_bn="all", lr_decay_every=1),
        dict(freeze_bn="stats", full_embedding_from=1),
        dict(masks="learned", hierarchy="binary", K=4),
        dict(freeze_backbone_epochs=1, T=2),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_run(options, tmp_path, tiny_data):
    spec = tiny(epochs=2, finetune_epochs=1, steps_per_epoch=2, eval_every=10, **options)
    history, _, _ = run(spec, tmp_path, tiny_data)
    check_run(history, spec)
    if spec.recluster_every == 1:
        assert history[1]["reclustered"] and history[1]["assignment_version"] == 1


def test_a_short_run_learns(tmp_path):
    started = time.perf_counter()
    # The tiny rig's optimiser on a larger task: whole epochs, re-clustering every second one.
    schedule = dict(warmup_epochs=1, T=2, steps_per_epoch=None, eval_every=100)
    spec = tiny(glyph_classes=200, image_size=32, embedding_dim=64, K=2, batch_size=32, kmeans_iterations=20, **schedule)
    data = load_dataset(spec, progress=False)
    torch.manual_seed(spec.seed)  # the same initial weights as the run's
    untrained = DivideAndConquerNet(spec, data.channels, len(np.unique(data.train.labels)))
    before = embedding.evaluate(untrained, data, spec, torch.device("cpu"))["test_recall@1"]
    history, _, _ = run(spec, tmp_path, data)
    after = history[-1]["test_recall@1"]
    assert [m["phase"] for m in history] == ["warmup", "divide", "divide", "conquer"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert after >= before + 0.05, (before, after)
    print(f"test_recall@1 {before:.3f} -> {after:.3f} in {time.perf_counter() - started:.1f} s")


def test_training_pass_needs_no_extra_pass_when_everything_was_seen(tiny_data, monkeypatch):
    spec = tiny(embedding_source="training_pass")
    n = len(tiny_data.train)
    net = DivideAndConquerNet(spec, tiny_data.channels, len(np.unique(tiny_data.train.labels)))
    embedded = []
    real_embed_split = embedding.embed_split

    def counting(net, split, spec, device, space="embedding", indices=None):
        embedded.append(np.arange(len(split)) if indices is None else np.asarray(indices))
        return real_embed_split(net, split, spec, device, space, indices)

    monkeypatch.setattr(dnc, "embed_split", counting)
    bank = EmbeddingBank(n)
    bank.vectors = np.random.default_rng(0).standard_normal((n, spec.embedding_dim)).astype(np.float32)
    bank.seen[:] = True
    bank.seen_globally[:] = True
    indices, vectors = dnc.collect_vectors(spec, net, tiny_data, World(), bank)
    assert all(len(e) == 0 for e in embedded), [len(e) for e in embedded]
    assert np.array_equal(np.sort(indices), np.arange(n))
    assert np.array_equal(vectors, bank.vectors[indices])

    # Half seen: exactly the unseen half gets a pass, and every sample is covered once.
    embedded.clear()
    bank.seen[:] = bank.seen_globally[:] = np.arange(n) % 2 == 0
    indices, vectors = dnc.collect_vectors(spec, net, tiny_data, World(), bank)
    assert sum(len(e) for e in embedded) == n // 2
    assert np.array_equal(np.concatenate(embedded), np.arange(1, n, 2))
    assert np.array_equal(np.sort(indices), np.arange(n))
    order = np.argsort(indices)
    full = embedding.embed_split(net, tiny_data.train, spec, torch.device("cpu"))
    np.testing.assert_allclose(vectors[order][1::2], full[1::2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vectors[order][0::2], bank.vectors[0::2])

    # No bank yet (the first round): one full pass.
    embedded.clear()
    indices, _ = dnc.collect_vectors(spec, net, tiny_data, World(), EmbeddingBank(n))
    assert sum(len(e) for e in embedded) == n and np.array_equal(indices, np.arange(n))


@pytest.mark.parametrize("stale_rounds", [0, 1, 2])
def test_bank_vectors_expire_after_stale_rounds(stale_rounds):
    n = 10
    bank = EmbeddingBank(n, stale_rounds)
    bank.record(np.arange(4), torch.ones(4, 3), global_indices=np.arange(6))
    for round_index in range(stale_rounds + 1):
        assert bank.seen[:4].all() and not bank.seen[4:].any(), round_index
        assert bank.seen_globally[:6].all() and not bank.seen_globally[6:].any()
        bank.reset()
    assert not bank.seen.any() and not bank.seen_globally.any()  # expired after stale_rounds rounds
    bank.record(np.array([7]), torch.zeros(1, 3), global_indices=np.array([7]))
    assert bank.seen.tolist() == [i == 7 for i in range(n)]  # a fresh vector is usable again
