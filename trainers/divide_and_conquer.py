"""Algorithm 1 of Sanakoyeu et al., "Divide and Conquer the Embedding Space for Metric Learning"
(CVPR 2019), with the TPAMI 2021 options.

    for each epoch:
        if it is a division epoch (every T epochs of the divide phase):
            embed the training set, cluster it into K groups        (the grouping service)
            cluster k now belongs to learner k                      (Hungarian-matched to last round)
        for each step:
            pick a learner k uniformly at random                    (or in turn: `learner_schedule`)
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

from .checkpoints import TrainState, load_checkpoint, save_checkpoint
from .data.base import DatasetBundle
from .data.loading import load_dataset
from .embedding import EmbeddingBank, embed_split, evaluate, loader
from .grouping import Assignment, PartitionRequest
from .metric_keys import TIE_BREAKER, best_key, selected_key
from .model import DivideAndConquerNet
from .pretrain import resolve_weights
from .runtime import Timer, autocast, backbone_resting, make_optimizer, memory_format, reset_optimizer_state, seed_epoch, to_device
from .sampler import ClusterBatchSampler
from .seam import Seam
from .spec import RunSpec, check_against_data


def train(spec: RunSpec, seam: Seam, data: DatasetBundle | None = None) -> TrainState:
    world, device, plan = seam.world, seam.world.device, spec.plan
    data = data or load_dataset(spec, progress=world.is_chief)
    class_ids, targets = np.unique(data.train.labels, return_inverse=True)  # labels 0..C-1 for losses
    check_against_data(spec, len(class_ids), data.train.has_groups, world.world_size)
    num_samples = len(targets)

    weights = resolve_weights(spec, progress=world.is_chief)  # `pretrained: glyphs` may pre-train here, before the seed
    torch.manual_seed(spec.seed)  # the initial weights are a function of the run's seed alone
    net = DivideAndConquerNet(spec, data.channels, len(class_ids), weights).to(device, memory_format=memory_format(spec))
    model = world.wrap_model(net)
    optimizer, scheduler = make_optimizer(spec, net)
    # `batch_size` is the global batch (the paper's): every worker takes its share of each step's
    # batch, all drawn from the same learner's cluster.
    sampler = ClusterBatchSampler(targets, spec.batch_size, spec.samples_per_class, spec.seed, world.rank, world.world_size)
    bank = EmbeddingBank(num_samples, spec.stale_rounds) if spec.embedding_source == "training_pass" else None
    state = TrainState(assignment=whole_training_set(num_samples))
    if seam.resume_from:
        state = restore(seam.resume_from, net, optimizer, scheduler, bank, world.world_size)
        if spec.test_eval == "selected" and state.selected_model is None and state.best_epoch == state.epoch - 1:
            state.selected_model = cpu_copy(net.state_dict())  # the checkpoint is of the selected epoch
    steps = spec.steps_per_epoch or max(1, num_samples // spec.batch_size)
    labels_of = torch.from_numpy(targets)

    for epoch in range(state.epoch, spec.total_epochs):
        timer, phase, metrics = Timer(), plan.phase(epoch), {}
        seed_epoch(spec.seed, epoch, world.rank)

        # Division: re-cluster the training data every T epochs.
        if plan.reclusters_at(epoch):
            state.assignment, metrics = divide(spec, seam, net, data, targets, state.assignment, bank, epoch)
        assignment = state.assignment if phase == "divide" else whole_training_set(num_samples)
        blocks = [plan.block_of(c, assignment.num_clusters, epoch) for c in range(assignment.num_clusters)]
        net.undivided = plan.undivided_at(epoch)
        reset_optimizer_state(optimizer, net.set_learner_blocks(blocks, plan.mask_copies(epoch)))
        sampler.set_assignment(assignment.clusters, assignment.num_clusters)

        # Training: one learner per step, a batch from that learner's cluster.
        model.train()
        learner_schedule = spec.setting("learner_schedule")
        if learner_schedule == "round_robin" and spec.steps_per_epoch is None:
            steps = sampler.round_robin_steps()  # the authors' epoch: every learner as many steps
        schedule = sampler.epoch(epoch, steps, learner_schedule)
        batches = loader(data.train, spec, train=True, batch_sampler=[step.indices.tolist() for step in schedule], device=device)
        train_timer, step_losses = Timer(), []
        with backbone_resting(optimizer, plan.backbone_rests(epoch)):
            for step, (images, _, indices) in zip(schedule, batches):
                with autocast(spec, device):
                    loss, vectors = model(to_device(images, spec, device), labels_of[indices].to(device), blocks[step.cluster])
                if not world.all_true(bool(torch.isfinite(loss))):  # every worker stops at the same step
                    raise NonFiniteLoss(
                        f"loss is not finite at epoch {epoch + 1}, step {len(step_losses) + 1}, "
                        f"learner block {blocks[step.cluster]} (cluster {step.cluster}) on some worker; "
                        f"lower the learning rates (lr {spec.lr:g}, lr_embedding {spec.lr_embedding:g}) "
                        "or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_losses.append(loss.detach())
                if bank is not None:
                    bank.record(indices.numpy(), vectors, step.global_indices)
        scheduler.step()
        train_seconds = train_timer()

        images_seen = sum(len(step.global_indices) for step in schedule)
        metrics.update(
            {
                "epoch": epoch,
                "total_epochs": spec.total_epochs,
                "phase": phase,
                "active_learners": len(set(blocks)),
                "assignment_version": assignment.version,
                "loss": float(torch.stack(step_losses).mean()),
                "steps": len(schedule),
                "train_steps": sum(h.get("steps", 0) for h in state.history) + len(schedule),
                "train_seconds": train_seconds,
                "images_per_second": images_seen / max(train_seconds, 1e-9),
                **({"cpu_decoded_images": batches.cpu_decoded} if hasattr(batches, "cpu_decoded") else {}),
                "lr": optimizer.param_groups[0]["lr"],
                "backbone_rests": plan.backbone_rests(epoch),
                "full_embedding": plan.full_embedding_at(epoch),
            }
        )
        if world.is_chief and ((epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.total_epochs):
            eval_timer = Timer()
            test_every_eval = spec.test_eval == "every_eval"
            metrics.update(evaluate(net, data, spec, device, test=test_every_eval))
            if selection_key(metrics, spec) >= selection_key(state.best_metrics, spec):
                state.best_value, state.best_epoch = metrics[spec.selection_metric], epoch
                state.best_metrics = {k: metrics[k] for k in (spec.selection_metric, TIE_BREAKER) if k in metrics}
                if not test_every_eval:
                    state.selected_model = cpu_copy(net.state_dict())
            if not test_every_eval and epoch + 1 == spec.total_epochs:
                metrics.update(evaluate_selected(net, data, spec, device, state, epoch))
            metrics["eval_seconds"] = eval_timer()
        metrics.update({"best_epoch": state.best_epoch, best_key(spec.selection_metric): state.best_value, "epoch_seconds": timer()})
        state.epoch = epoch + 1
        state.history.append(metrics)
        checkpoint = None
        keep = state.best_epoch == epoch or (epoch + 1) % spec.checkpoint_every == 0 or epoch + 1 == spec.total_epochs
        if world.is_chief and keep:
            checkpoint = save_checkpoint(
                seam.new_checkpoint_dir(epoch), spec, net, optimizer, scheduler, state, bank if world.world_size == 1 else None
            )
        seam.report(metrics, checkpoint)
    return state


def evaluate_selected(
    net: DivideAndConquerNet, data: DatasetBundle, spec: RunSpec, device: torch.device, state: TrainState, epoch: int
) -> dict:
    """`test_eval: selected`: the test sets, once, on the selected epoch's weights, as
    `selected_<metric>`; when the selection is this last epoch, also as this epoch's own
    `test_*` metrics (so its row reads like an `every_eval` row)."""
    if state.best_epoch == epoch:
        tested = evaluate(net, data, spec, device, validation=False)
        return {**tested, **{selected_key(name): value for name, value in tested.items()}}
    if state.selected_model is None:
        raise RuntimeError(f"the selected epoch {state.best_epoch + 1}'s weights were not kept; cannot test them")
    final_weights = cpu_copy(net.state_dict())
    net.load_state_dict(state.selected_model)
    net.undivided = spec.plan.undivided_at(state.best_epoch)  # the selected epoch's form
    try:
        tested = evaluate(net, data, spec, device, validation=False)
    finally:
        net.load_state_dict(final_weights)  # the last checkpoint holds the last epoch's weights
        net.undivided = spec.plan.undivided_at(epoch)
    return {selected_key(name): value for name, value in tested.items()}


def cpu_copy(weights: dict) -> dict:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights.items()}


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: the run stops at once (the message names where)."""


# Model selection: the selection metric; an exact tie goes to the finer MAP@R (TIE_BREAKER), then
# to the later epoch (a validation Recall@1 tied at two epochs must not pick the earlier by accident).


def selection_key(metrics: dict, spec: RunSpec) -> tuple[float, float]:
    value = metrics.get(spec.selection_metric)
    if value is None or value != value:
        return (float("-inf"), float("-inf"))
    finer = metrics.get(TIE_BREAKER)
    return (value, finer if finer is not None and finer == finer else float("-inf"))


def divide(
    spec: RunSpec,
    seam: Seam,
    net: DivideAndConquerNet,
    data: DatasetBundle,
    targets: np.ndarray,
    previous: Assignment,
    bank: EmbeddingBank | None,
    epoch: int,
) -> tuple[Assignment, dict]:
    """One division round: this worker's vectors -> grouping service -> the shared assignment."""
    timer, plan = Timer(), spec.plan
    round_index = plan.round_of(epoch)
    request = PartitionRequest(
        round=round_index,
        strategy=plan.strategy,
        num_clusters=plan.clusters_in_round(round_index),
        splits=plan.splits_at_round(round_index),
        seed=spec.seed,
        labels=targets,
        groups=data.train.groups,
        previous=previous.clusters if previous.version >= 0 else None,
        previous_num_clusters=previous.num_clusters if previous.version >= 0 else 0,
        rank=seam.world.rank,
        world_size=seam.world.world_size,
        kmeans_iterations=spec.kmeans_iterations,
        kmeans_sample=spec.kmeans_sample,
        move_strays=spec.setting("stray_samples") == "repair",
    )
    if request.needs_vectors:
        request.indices, request.vectors = collect_vectors(spec, net, data, seam.world, bank)
    embed_seconds = timer()
    assignment = seam.partition(request)
    if bank is not None:
        bank.reset()
    return assignment, {
        "reclustered": True,
        "cluster_seconds": timer(),
        "embed_seconds": embed_seconds,
        "kmeans_seconds": assignment.seconds,
        "cluster_cost": assignment.cost,
        "cluster_changed": assignment.changed,
        "cluster_repaired": assignment.repaired,
        "cluster_sizes": json.dumps(assignment.sizes()),
        **assignment.evidence(targets, data.train.groups),  # classes per cluster, class and group purity
        "assignment_digest": zlib.crc32(assignment.clusters.astype(np.int64).tobytes()),
    }


def collect_vectors(spec: RunSpec, net: DivideAndConquerNet, data: DatasetBundle, world, bank: EmbeddingBank | None):
    """This worker's share of the cluster-space vectors: a dedicated pass over the samples it
    owns (`full_pass`, the paper), or what its training steps computed (`training_pass`) plus a
    pass over the owned samples no worker has seen since the last round."""
    owned = np.arange(world.rank, len(data.train), world.world_size)
    if bank is None or bank.vectors is None:
        return owned, embed_split(net, data.train, spec, world.device, spec.setting("cluster_space"), owned)
    unseen = owned[~bank.seen_globally[owned]]
    mine = np.flatnonzero(bank.seen)
    fresh = embed_split(net, data.train, spec, world.device, spec.setting("cluster_space"), unseen)
    return np.concatenate([mine, unseen]), np.concatenate([bank.vectors[mine], fresh])


def whole_training_set(num_samples: int) -> Assignment:
    """The 'assignment' outside the divide phase: one learner, all data (version -1)."""
    return Assignment(version=-1, clusters=np.zeros(num_samples, dtype=np.int64), num_clusters=1)


def restore(directory: str, net: DivideAndConquerNet, optimizer, scheduler, bank: EmbeddingBank | None, world_size: int) -> TrainState:
    payload = load_checkpoint(directory, map_location=next(net.parameters()).device)
    net.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if bank is not None and payload.get("bank") is not None and world_size == 1:
        bank.load(payload["bank"])
    return payload["state"]
