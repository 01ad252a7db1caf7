"""Algorithm 1 of Sanakoyeu et al., "Divide and Conquer the Embedding Space for Metric Learning"
(CVPR 2019), with the TPAMI 2021 options.

    for each epoch:
        if it is a division epoch (every T epochs of the divide phase):
            embed the training set, cluster it into K groups        (the grouping service)
            cluster k now belongs to learner k                      (Hungarian-matched to last round)
        for each step:
            pick a learner k uniformly at random
            draw a batch of m images per class from cluster k
            loss_k on learner k's slice of the embedding (d/K dims, L2-normalised)
            update the shared backbone and learner k's slice only
    conquer: the last `finetune_epochs` train the full embedding on all data

The loop talks to the outside world only through the `Seam` (report, partition, world,
checkpoints), so the same code runs in one process and on Ray Train workers.
"""
from __future__ import annotations

import json
import zlib

import numpy as np
import torch

from .data.base import DatasetBundle
from .data.loading import load_dataset
from .grouping import Assignment, PartitionRequest
from .model import Block, DivideAndConquerNet
from .runtime import (EmbeddingBank, Timer, TrainState, autocast, embed_split, evaluate, load_checkpoint,
                      loader, make_optimizer, save_checkpoint, seed_epoch)
from .sampler import ClusterBatchSampler
from .seam import Seam
from .spec import RunSpec, check_against_data


def train(spec: RunSpec, seam: Seam, data: DatasetBundle | None = None) -> TrainState:
    world, device = seam.world, seam.world.device
    data = data or load_dataset(spec, progress=world.is_chief)
    class_ids, targets = np.unique(data.train.labels, return_inverse=True)  # labels 0..C-1 for losses
    check_against_data(spec, len(class_ids), data.train.has_groups)
    num_samples = len(targets)

    torch.manual_seed(spec.seed)  # the initial weights are a function of the run's seed alone
    net = DivideAndConquerNet(spec, data.channels, len(class_ids)).to(device)
    model = world.wrap_model(net)
    optimizer, scheduler = make_optimizer(spec, net)
    sampler = ClusterBatchSampler(targets, spec.batch_size, spec.samples_per_class, spec.seed,
                                  world.rank, world.world_size)
    bank = EmbeddingBank(num_samples, spec.stale_rounds) if spec.embedding_source == "training_pass" else None
    state = TrainState(assignment=whole_training_set(num_samples))
    if seam.resume_from:
        state = restore(seam.resume_from, net, optimizer, scheduler, bank, world.world_size)
    steps = spec.steps_per_epoch or max(1, num_samples // (spec.batch_size * world.world_size))
    labels_of = torch.from_numpy(targets)

    for epoch in range(state.epoch, spec.total_epochs):
        timer, phase, metrics = Timer(), spec.phase(epoch), {}
        seed_epoch(spec.seed, epoch, world.rank)

        # Division: re-cluster the training data every T epochs.
        if spec.reclusters_at(epoch):
            state.assignment, metrics = divide(spec, seam, net, data, targets, state.assignment, bank, epoch)
        assignment = state.assignment if phase == "divide" else whole_training_set(num_samples)
        blocks = learner_blocks(spec, phase, assignment.num_clusters)
        sampler.set_assignment(assignment.clusters, assignment.num_clusters)

        # Training: one learner per step, a batch from that learner's cluster.
        model.train()
        schedule = sampler.epoch(epoch, steps)
        batches = loader(data.train, spec, train=True, batch_sampler=[step.indices.tolist() for step in schedule])
        train_timer, step_losses = Timer(), []
        for step, (images, _, indices) in zip(schedule, batches):
            with autocast(spec, device):
                loss, vectors = model(images.to(device, non_blocking=True), labels_of[indices].to(device), blocks[step.cluster])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_losses.append(loss.detach())
            if bank is not None:
                bank.record(indices.numpy(), vectors, step.global_indices)
        scheduler.step()
        train_seconds = train_timer()

        metrics.update({
            "epoch": epoch, "total_epochs": spec.total_epochs, "phase": phase,
            "active_learners": len(set(blocks)), "assignment_version": assignment.version,
            "loss": float(torch.stack(step_losses).mean()), "steps": len(schedule),
            "train_seconds": train_seconds,
            "images_per_second": len(schedule) * spec.batch_size * world.world_size / max(train_seconds, 1e-9),
            "lr": optimizer.param_groups[0]["lr"],
        })
        if world.is_chief and ((epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.total_epochs):
            eval_timer = Timer()
            metrics.update(evaluate(net, data, spec, device))
            metrics["eval_seconds"] = eval_timer()
            value = metrics.get(spec.selection_metric)
            if value is not None and value > state.best_value:
                state.best_value, state.best_epoch = value, epoch
        metrics.update({"best_epoch": state.best_epoch, f"best_{spec.selection_metric}": state.best_value,
                        "epoch_seconds": timer()})
        state.epoch = epoch + 1
        state.history.append(metrics)
        checkpoint = None
        if world.is_chief:
            checkpoint = save_checkpoint(seam.new_checkpoint_dir(epoch), spec, net, optimizer, scheduler,
                                         state, bank if world.world_size == 1 else None)
        seam.report(metrics, checkpoint)
    return state


def divide(spec: RunSpec, seam: Seam, net: DivideAndConquerNet, data: DatasetBundle, targets: np.ndarray,
           previous: Assignment, bank: EmbeddingBank | None, epoch: int) -> tuple[Assignment, dict]:
    """One division round: this worker's vectors -> grouping service -> the shared assignment."""
    timer = Timer()
    round_index = (epoch - spec.warmup_epochs) // spec.recluster_every
    num_clusters = spec.num_learners
    if spec.hierarchy == "binary":
        num_clusters = min(2 ** round_index, spec.num_learners)  # K = 1, 2, 4, ... until the target
    strategy = {"kmeans": "binary" if spec.hierarchy == "binary" else "kmeans", "kmeans_nosplit": "kmeans"}.get(
        spec.grouping, spec.grouping)
    request = PartitionRequest(
        round=round_index, strategy=strategy, num_clusters=num_clusters, seed=spec.seed,
        labels=targets, groups=data.train.groups,
        previous=previous.clusters if previous.version >= 0 else None,
        rank=seam.world.rank, world_size=seam.world.world_size, kmeans_iterations=spec.kmeans_iterations,
    )
    if request.needs_vectors:
        request.indices, request.vectors = collect_vectors(spec, net, data, seam.world, bank)
    embed_seconds = timer()
    assignment = seam.partition(request)
    if bank is not None:
        bank.reset()
    return assignment, {
        "reclustered": True, "cluster_seconds": timer(), "embed_seconds": embed_seconds,
        "kmeans_seconds": assignment.seconds, "cluster_cost": assignment.cost,
        "cluster_changed": assignment.changed, "cluster_repaired": assignment.repaired,
        "cluster_sizes": json.dumps(assignment.sizes()),
        "assignment_digest": zlib.crc32(assignment.clusters.astype(np.int64).tobytes()),
    }


def collect_vectors(spec: RunSpec, net: DivideAndConquerNet, data: DatasetBundle, world, bank: EmbeddingBank | None):
    """This worker's share of the cluster-space vectors: a dedicated pass over the samples it
    owns (`full_pass`, the paper), or what its training steps computed (`training_pass`) plus a
    pass over the owned samples no worker has seen since the last round."""
    owned = np.arange(world.rank, len(data.train), world.world_size)
    if bank is None or bank.vectors is None:
        return owned, embed_split(net, data.train, spec, world.device, spec.cluster_space, owned)
    unseen = owned[~bank.seen_globally[owned]]
    mine = np.flatnonzero(bank.seen)
    fresh = embed_split(net, data.train, spec, world.device, spec.cluster_space, unseen)
    return np.concatenate([mine, unseen]), np.concatenate([bank.vectors[mine], fresh])


def learner_blocks(spec: RunSpec, phase: str, num_clusters: int) -> list[Block]:
    """The part of the embedding each cluster's learner trains (see `model.Block`)."""
    k = spec.num_learners
    if phase != "divide" or spec.grouping == "kmeans_nosplit":
        return [(0, k)] * num_clusters
    width = k // num_clusters
    return [(c * width, (c + 1) * width) for c in range(num_clusters)]


def whole_training_set(num_samples: int) -> Assignment:
    """The 'assignment' outside the divide phase: one learner, all data (version -1)."""
    return Assignment(version=-1, clusters=np.zeros(num_samples, dtype=np.int64), num_clusters=1)


def restore(directory: str, net: DivideAndConquerNet, optimizer, scheduler, bank: EmbeddingBank | None,
            world_size: int) -> TrainState:
    payload = load_checkpoint(directory, map_location=next(net.parameters()).device)
    net.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if bank is not None and payload.get("bank") is not None and world_size == 1:
        bank.load(payload["bank"])
    return payload["state"]
