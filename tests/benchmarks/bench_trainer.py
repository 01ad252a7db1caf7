"""Trainer benchmarks on CPU (not collected by pytest: the file is not named test_*.py).

    .venv/bin/python tests/benchmarks/bench_trainer.py [--threads 1] [--size quick|small] [--skip-overhead]
        [--only step|round|data|overhead]

1. Step time: a divide-and-conquer step (learner k's slice (k, k+1) of a K = 4 net) vs a plain
   single-embedding step (block (0, 1) of a K = 1 net) with the same GlyphNet backbone and d,
   batch 128 of 32x32 images, interleaved step by step; medians.
2. One clustering round vs n: an embedding pass over n images (random uint8 32x32 through an
   untrained GlyphNet) and k-means + repair + Hungarian matching (`compute_assignment`, K = 4,
   the spec's default 100 iterations, against a previous round).
4. The data path and the evaluation's share of an epoch: the per-image DataLoader (before) vs
   the batched gather of in-memory images, side by side, with the metrics compared.
5. Clustering overhead per epoch at T = 2, `embedding_source` full_pass vs training_pass with
   stale_rounds 0 and 1: (round seconds / T) / training seconds of one epoch, from real
   `train()` runs on glyphs (the round at epoch 4, after four epochs filled the bank).

Threads default to 1: on a small CPU shared with other work, OpenMP threads that spin-wait for
each other make multi-threaded timings erratic (an order of magnitude slower under load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import yaml

from dncml.trainers.data.base import ImageSplit
from dncml.trainers.embedding import embed_split
from dncml.trainers.faiss_ops import num_gpus
from dncml.trainers.grouping import PartitionRequest, compute_assignment
from dncml.trainers.model import DivideAndConquerNet
from dncml.trainers.runtime import make_optimizer
from dncml.trainers.spec import from_dict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suite's tiny training rigs, shared with the tests
from rigs import train_locally  # noqa: E402

CPU = torch.device("cpu")


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


# ------------------------------------------------------------------------------ 1. step time
def bench_step(batch_size: int = 128, warm: int = 5, steps: int = 30, d: int = 128, k: int = 4) -> None:
    header(
        f"1. training step, GlyphNet, batch {batch_size}, 32x32, d = {d}, margin loss "
        f"({warm} warm-up + {steps} timed steps each, interleaved; medians)"
    )
    base = dict(d=d, batch_size=batch_size, m=4, lr=1e-3, lr_embedding=1e-3, image_size=32)
    nets = {}
    for name, spec in (
        ("divide (K=4, block (k,k+1))", from_dict({**base, "K": k})),
        ("plain (K=1, block (0,1))", from_dict({**base, "K": 1, "grouping": "none"})),
    ):
        torch.manual_seed(0)
        net = DivideAndConquerNet(spec, 1, 100).train()
        nets[name] = (net, make_optimizer(spec, net)[0], spec.num_learners)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 1, 32, 32, generator=generator)
    labels = torch.arange(batch_size // 4).repeat_interleave(4)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(warm + steps):
        for name, (net, optimizer, num_learners) in nets.items():
            block = (i % num_learners, i % num_learners + 1)
            started = time.perf_counter()
            loss, _ = net(images, labels, block)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warm:
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'step':<30}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}")
    for name, values in times.items():
        q = np.percentile(values, [10, 90]) * 1e3
        print(f"{name:<30}{medians[name] * 1e3:>12.1f}{q[0]:>10.1f}{q[1]:>10.1f}")
    divide, plain = medians.values()
    print(f"ratio divide / plain: {divide / plain:.3f}")


def bench_backbone_forms(warm: int = 5, steps: int = 40) -> None:
    """GlyphNet's forward (frozen BN folded into the convolutions, ReLU after the pool, NHWC kept)
    vs its layers run one after another (`body`), in the quick run's set-up (the shipped
    pre-trained backbone, frozen BatchNorm, K = 8, channels_last), step by step interleaved."""
    from dncml.trainers.pretrain import resolve_weights
    from dncml.trainers.runtime import memory_format

    spec = from_dict({**yaml.safe_load((ROOT / "experiments/runs/glyphs_pretrained.yaml").read_text()), "num_learners": 8})
    header(f"1b. GlyphNet forward vs its layers one by one (quick run: freeze_bn {spec.resolved_freeze_bn}, K = 8, batch 128, eval 64)")
    layout = memory_format(spec)
    forms = {}
    for name in ("forward (folded)", "layers (body)"):
        torch.manual_seed(0)
        net = DivideAndConquerNet(spec, 1, 300, resolve_weights(spec)).to(memory_format=layout).train()
        if name == "layers (body)":
            net.backbone.forward = net.backbone.body.forward
        forms[name] = (net, make_optimizer(spec, net)[0])
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(128, 1, 32, 32, generator=generator).contiguous(memory_format=layout)
    labels = torch.arange(32).repeat_interleave(4)
    train_times: dict[str, list[float]] = {name: [] for name in forms}
    eval_times: dict[str, list[float]] = {name: [] for name in forms}
    for i in range(warm + steps):
        for name, (net, optimizer) in forms.items():
            started = time.perf_counter()
            loss, _ = net(images, labels, (i % 8, i % 8 + 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trained = time.perf_counter()
            net.embed(images[:64])
            if i >= warm:
                train_times[name].append(trained - started)
                eval_times[name].append(time.perf_counter() - trained)
    print(f"{'form':<20}{'step ms':>10}{'train img/s':>13}{'eval img/s':>12}")
    for name in forms:
        step, embed = statistics.median(train_times[name]), statistics.median(eval_times[name])
        print(f"{name:<20}{step * 1e3:>10.1f}{128 / step:>13.0f}{64 / embed:>12.0f}")
    (fast, slow) = (statistics.median(train_times[name]) for name in forms)
    print(f"speed-up of the training step: {slow / fast:.2f}x")


# ------------------------------------------------------------------------- 2. clustering round
def bench_round(sizes=(5_000, 20_000, 50_000), k: int = 4, per_class: int = 24) -> None:
    spec = from_dict(dict(d=128, K=k, image_size=32))
    header(
        f"2. one clustering round vs n: embedding pass (untrained GlyphNet, 32x32, eval batch "
        f"{spec.eval_batch_size}) + k-means (K = {k}, {spec.kmeans_iterations} iterations) + repair + matching"
    )
    torch.manual_seed(0)
    net = DivideAndConquerNet(spec, 1, 100)
    rng = np.random.default_rng(0)
    print(f"{'n':>8}{'embed s':>10}{'kmeans+match s':>16}{'round s':>10}{'embed us/img':>14}")
    for n in sizes:
        labels = np.arange(n) // per_class
        split = ImageSplit("synthetic", labels, images=rng.integers(0, 256, (n, 32, 32), dtype=np.uint8))
        started = time.perf_counter()
        vectors = embed_split(net, split, spec, CPU)
        embed_seconds = time.perf_counter() - started
        request = dict(
            strategy="kmeans", num_clusters=k, seed=0, labels=labels, groups=np.full(n, -1), kmeans_iterations=spec.kmeans_iterations
        )
        previous = compute_assignment(PartitionRequest(round=0, **request), vectors)
        started = time.perf_counter()
        compute_assignment(PartitionRequest(round=1, previous=previous.clusters, **request), vectors)
        kmeans_seconds = time.perf_counter() - started
        print(
            f"{n:>8}{embed_seconds:>10.2f}{kmeans_seconds:>16.3f}{embed_seconds + kmeans_seconds:>10.2f}{embed_seconds / n * 1e6:>14.0f}",
            flush=True,
        )


# ------------------------------------------------------------------ 3. overhead per epoch, T = 2
class Stop(Exception):
    pass


def bench_overhead(size: str) -> None:
    T = 2
    if size == "quick":
        glyphs = dict(glyph_classes=None, glyph_instances=24)
        label = "the quick size (every glyph class x 24 instances, 32x32)"
    else:
        glyphs = dict(glyph_classes=600, glyph_instances=24)
        label = "a small size (glyph_classes = 600, glyph_instances = 24, 32x32)"
    # glyphs_quick.yaml's model and optimiser; warm-up 0 and no evaluation, so epoch 2 is the
    # second round (after two epochs of training) and nothing else is timed.
    model = dict(image_size=32, d=128, K=4, loss="margin", batch_size=128, m=4, lr=1e-3, lr_embedding=1e-3, lr_loss=1e-2)
    schedule = dict(grouping="kmeans", T=T, warmup_epochs=0, epochs=6, finetune_epochs=0, eval_every=100, seed=0)
    spec = from_dict({**glyphs, **model, **schedule})
    header(f"3. clustering overhead per epoch at T = {T}, on {label}; (round s / T) / epoch training s")
    from dncml.trainers.data.loading import load_dataset

    started = time.perf_counter()
    data = load_dataset(spec, progress=False)
    print(
        f"dataset: {len(data.train)} training images, {len(np.unique(data.train.labels))} classes "
        f"(loaded / rendered in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    rows = []
    variants = {
        "full_pass": dict(embedding_source="full_pass"),
        "training_pass/0": dict(embedding_source="training_pass", stale_rounds=0),
        "training_pass/1": dict(embedding_source="training_pass", stale_rounds=1),
    }
    for source, change in variants.items():
        history = []

        def report(metrics, checkpoint, history=history):
            history.append(metrics)
            if metrics["epoch"] == 4:
                raise Stop  # skip the remaining epoch and the final evaluation

        with tempfile.TemporaryDirectory() as root:
            try:
                train_locally(spec.replace(**change), root, data, report=report)
            except Stop:
                pass
        round_metrics = history[4]  # the third round: a steady state for every variant
        train_seconds = statistics.median(m["train_seconds"] for m in history)  # robust to load spikes
        rows.append(
            (
                source,
                history[0]["cluster_seconds"],
                round_metrics["embed_seconds"],
                round_metrics["kmeans_seconds"],
                round_metrics["cluster_seconds"],
                train_seconds,
                round_metrics["cluster_seconds"] / T / train_seconds,
            )
        )
        print(f"  {source}: epochs {[round(m['train_seconds'], 1) for m in history]} s training", flush=True)
    print(f"{'source/stale':<16}{'round@0 s':>10}{'embed s':>9}{'kmeans s':>10}{'round@4 s':>10}{'epoch train s':>15}{'overhead':>10}")
    for source, first, embed, kmeans_s, total, train_s, overhead in rows:
        print(f"{source:<16}{first:>10.2f}{embed:>9.2f}{kmeans_s:>10.3f}{total:>10.2f}{train_s:>15.2f}{overhead:>10.1%}")
    print(
        "(epoch train s = median training seconds of epochs 0-4; round@4 = the round at epoch 4: "
        "embed (training_pass: only samples no step saw within the last 1 + stale_rounds rounds) + k-means, "
        "repair, matching; round@0 is a full pass for all: the bank is empty)"
    )


# --------------------------------------------------------------- 4. data path and evaluation
def per_image_batches(split, batches):
    """The path before issue 14: a DataLoader calling the dataset once per image, then collate."""
    from torch.utils.data import DataLoader

    from dncml.trainers.data.torch_dataset import ImageDataset

    return DataLoader(ImageDataset(split), batch_sampler=[list(map(int, b)) for b in batches])


def bench_data_and_eval(size: str) -> None:
    """Side by side in one run: (a) training images per second fed by the per-image DataLoader vs
    the batched gather (`ArrayBatches`), data path alone and with the training step; (b) the
    evaluation's share of an epoch (train + evaluate), with the old per-image, no_grad,
    batch-256 embedding pass vs today's batched inference-mode pass."""
    from dncml.trainers import embedding
    from dncml.trainers.data.loading import load_dataset
    from dncml.trainers.data.torch_dataset import ArrayBatches
    from dncml.trainers.sampler import ClusterBatchSampler

    # The quick presets' run (experiments/runs/glyphs_pretrained.yaml) from scratch: the weights
    # do not change the timings, and pre-training would take minutes.
    run = yaml.safe_load((Path(__file__).parents[2] / "experiments" / "runs" / "glyphs_pretrained.yaml").read_text())
    overrides = {"quick": {}, "small": dict(glyph_classes=200)}[size]
    spec = from_dict({**run, **overrides, "pretrained": None, "name": f"bench-{size}"})
    data = load_dataset(spec, progress=False)
    header(
        f"4. data path and evaluation share ({size}: {len(data.train)} training images, "
        f"{len(data.val.query) + len(data.tests[0].query)} evaluation images)"
    )
    targets = np.unique(data.train.labels, return_inverse=True)[1]
    sampler = ClusterBatchSampler(targets, spec.batch_size, spec.samples_per_class, seed=0)
    sampler.set_assignment(np.zeros(len(targets), np.int64), 1)
    batches = [step.indices for step in sampler.epoch(0, len(targets) // spec.batch_size)]
    labels = torch.from_numpy(targets)
    steps = len(targets) // spec.batch_size

    def fresh_net(layout: torch.memory_format) -> DivideAndConquerNet:
        torch.manual_seed(0)
        return DivideAndConquerNet(spec, 1, len(np.unique(targets))).train().to(memory_format=layout)

    def feed(source, layout: torch.memory_format | None) -> float:
        """Images per second through `source`, alone (layout None) or with a training step."""
        net = fresh_net(layout or torch.contiguous_format)
        optimizer, _ = make_optimizer(spec, net)
        started = time.perf_counter()
        for images, _, index in source:
            if layout is not None:
                loss, _ = net(images.contiguous(memory_format=layout), labels[index], (0, 1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return steps * spec.batch_size / (time.perf_counter() - started)

    nchw, nhwc = torch.contiguous_format, torch.channels_last
    print(f"{'training path':<34}{'data only img/s':>17}{'with training img/s':>21}")
    rates = {}
    for name, make, layout in (
        ("per image, NCHW (before)", lambda: per_image_batches(data.train, batches), nchw),
        ("batched, NCHW", lambda: ArrayBatches(data.train, batches), nchw),
        ("batched, channels_last (today)", lambda: ArrayBatches(data.train, batches), nhwc),
    ):
        rates[name] = (feed(make(), None), feed(make(), layout))
        print(f"{name:<34}{rates[name][0]:>17.0f}{rates[name][1]:>21.0f}")
    (old_data, old_train), _, (new_data, new_train) = rates.values()
    print(
        f"ratio today / before: data {new_data / old_data:.1f}x, with training {new_train / old_train:.2f}x "
        f"(target >= 1.3x, per core: {torch.get_num_threads()} thread(s))"
    )

    net = fresh_net(nchw).eval()

    @torch.no_grad()
    def old_evaluate():
        from dncml.trainers.evaluation import evaluate_embeddings

        metrics = {}
        for eval_set in [data.val, *data.tests]:
            order = np.arange(len(eval_set.query))
            chunks = [
                net.embed(x) for x, _, _ in per_image_batches(eval_set.query, [order[i : i + 256] for i in range(0, len(order), 256)])
            ]
            metrics.update(
                evaluate_embeddings(
                    torch.cat(chunks).numpy(), eval_set.query.labels, eval_set.recall_ks, seed=spec.seed, prefix=f"{eval_set.name}_"
                )
            )
        return metrics

    train_seconds = steps * spec.batch_size / new_train
    epochs = spec.total_epochs
    print(f"training one epoch (today's path): {train_seconds:.1f} s; a run has {epochs} epochs")
    print(f"{'evaluation, per epoch':<40}{'seconds':>9}{'share of epoch':>16}")

    def timed(evaluate):
        started = time.perf_counter()
        return evaluate(), time.perf_counter() - started

    def row(name, seconds):
        print(f"{name:<40}{seconds:>9.1f}{seconds / (seconds + train_seconds):>15.0%}")

    def largest_difference(a: dict, b: dict) -> float:
        return max(abs(a[k] - b[k]) for k in a)

    before, before_seconds = timed(old_evaluate)
    row("per image, NCHW, val + test (before)", before_seconds)
    nchw_spec = from_dict({**spec.to_dict(), "channels_last": False})
    every_nchw, _ = timed(lambda: embedding.evaluate(net, data, nchw_spec, CPU))
    net = net.to(memory_format=nhwc)
    every, every_seconds = timed(lambda: embedding.evaluate(net, data, spec, CPU))
    row("every_eval: val + test", every_seconds)
    validation, validation_seconds = timed(lambda: embedding.evaluate(net, data, spec, CPU, test=False))
    tested, test_seconds = timed(lambda: embedding.evaluate(net, data, spec, CPU, validation=False))
    selected_seconds = validation_seconds + test_seconds / epochs
    row(f"selected (default): val + test/{epochs}", selected_seconds)
    print(
        f"largest metric difference, before vs today's evaluation in NCHW: {largest_difference(before, every_nchw):.2e} "
        f"(target: <= 1e-6); NCHW vs channels_last: {largest_difference(every_nchw, every):.2e}; "
        f"every_eval vs selected's separate passes: {largest_difference({**validation, **tested}, every):.2e}"
    )
    print(
        f"evaluation target: <= 15 % of an epoch; selected / every_eval evaluation time "
        f"{selected_seconds / every_seconds:.2f}x; before / today {before_seconds / selected_seconds:.1f}x"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", choices=("quick", "small"), default="quick")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--only", choices=("step", "round", "overhead", "data"), default=None, help="run one benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) of {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}, faiss GPUs {num_gpus()}"
    )
    total = time.perf_counter()
    chosen = [args.only] if args.only else ["step", "round", "data"] + ([] if args.skip_overhead else ["overhead"])
    if "step" in chosen:
        bench_step()
        bench_backbone_forms()
    if "round" in chosen:
        bench_round(tuple(args.sizes))
    if "data" in chosen:
        bench_data_and_eval(args.size)
    if "overhead" in chosen:
        bench_overhead(args.size)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
