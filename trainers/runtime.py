"""The plumbing around Algorithm 1: devices, seeds, the optimiser and its learning rates, timers.
Embedding passes and evaluation live in `embedding.py`, checkpoints in `checkpoints.py`; all of it
is kept out of `divide_and_conquer.py` so that the algorithm reads on its own."""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch

from .model import DivideAndConquerNet
from .spec import RunSpec


def resolve_device(spec: RunSpec) -> torch.device:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("RunSpec device 'cuda' asked for, but torch sees no GPU (use device: auto or cpu)")
    if spec.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_data_path(spec: RunSpec) -> str:
    """cpu | gpu: where a photo run decodes and augments its images (`data_path: auto` is gpu
    on a CUDA device, cpu otherwise). gpu on a CPU device runs the same tensor path on the CPU."""
    if spec.data_path != "auto":
        return spec.data_path
    return "gpu" if resolve_device(spec).type == "cuda" else "cpu"


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed every RNG at each epoch from (seed, epoch, rank): a run resumed at an epoch boundary
    continues exactly as the uninterrupted run would."""
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def memory_format(spec: RunSpec) -> torch.memory_format:
    """channels_last (NHWC) is the layout oneDNN's and cuDNN's fast convolutions use: a GlyphNet
    step on one CPU core runs about 1.5x faster in it, and bf16 ResNets on GPUs need it."""
    return torch.channels_last if spec.channels_last else torch.contiguous_format


def to_device(images: torch.Tensor, spec: RunSpec, device: torch.device) -> torch.Tensor:
    """A batch of images on the device, in the run's memory format."""
    return images.to(device, non_blocking=True, memory_format=memory_format(spec))


def autocast(spec: RunSpec, device: torch.device):
    if spec.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(spec: RunSpec, net: DivideAndConquerNet) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with separate learning rates for backbone, embedding and loss parameters; optional
    step decay per epoch."""
    groups = net.parameter_groups()
    optimizer = torch.optim.Adam(
        [
            group
            for group in (
                {"params": groups["backbone"], "lr": spec.lr, "weight_decay": spec.weight_decay, "name": "backbone"},
                {"params": groups["embedding"], "lr": spec.lr_embedding, "weight_decay": spec.weight_decay, "name": "embedding"},
                # TPAMI: the masks learn at their own, larger rate (the authors' SOP run: 100 x the base rate)
                {"params": groups["masks"], "lr": spec.lr * spec.mask_lr_multiplier, "weight_decay": spec.weight_decay, "name": "masks"},
                {"params": groups["loss"], "lr": spec.lr_loss, "weight_decay": 0.0, "name": "loss"},
            )
            if group["params"]
        ]
    )
    if spec.lr_decay_every:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, spec.lr_decay_every, spec.lr_decay_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return optimizer, scheduler


@contextlib.contextmanager
def backbone_resting(optimizer: torch.optim.Optimizer, rests: bool):
    """TPAMI's backbone freeze after a re-clustering: the backbone's learning rate is 0 for the
    epoch (as the authors do it: gradients still flow to the embedding and the losses)."""
    groups = [g for g in optimizer.param_groups if g.get("name") == "backbone"] if rests else []
    saved = [g["lr"] for g in groups]
    for group in groups:
        group["lr"] = 0.0
    try:
        yield
    finally:
        for group, lr in zip(groups, saved):
            group["lr"] = lr


def reset_optimizer_state(optimizer: torch.optim.Optimizer, parameters) -> None:
    """Forget Adam's moments of `parameters` (a mask copied from its parent starts afresh)."""
    for parameter in parameters:
        optimizer.state.pop(parameter, None)


class Timer:
    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started
