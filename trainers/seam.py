"""The seam between the algorithm and whatever runs it.

The training loop is written once, against this interface. A single process uses the local
implementations below; `dncml.platform` passes Ray-backed ones (ray.train.report, the clustering
actor, DDP, ray.train.Checkpoint) without the loop knowing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import publishing_dir
from .grouping import Assignment, LocalGroupingService, PartitionRequest
from .metric_keys import PROGRESS_METRICS, selected_key


class World:
    """Rank, world size and the collective operations the loop needs. Single process: trivial."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")

    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        """Distributed runs wrap the module in DDP here."""
        return module

    def barrier(self) -> None:
        pass

    def all_true(self, flag: bool) -> bool:
        """True when `flag` is true on every worker (all workers then take the same branch)."""
        return flag

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


Reporter = Callable[[dict, "str | None"], None]  # (metrics of one epoch, checkpoint dir or None)


@dataclass
class Seam:
    report: Reporter
    partition: Callable[[PartitionRequest], Assignment] = field(default_factory=LocalGroupingService)
    world: World = field(default_factory=World)
    resume_from: str | None = None  # a checkpoint directory to continue from
    checkpoint_root: str | None = None  # where checkpoints are written before they are reported

    def new_checkpoint_dir(self, epoch: int) -> str:
        root = Path(self.checkpoint_root) if self.checkpoint_root else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"epoch-{epoch:04d}-", dir=root)


class LocalRun:
    """Reporter of a single-process run: keeps the history, prints one line per epoch and keeps
    the newest `keep` checkpoints, plus the one of the epoch model selection chose (the trainer's
    `best_epoch`, which survives a resume), in `run_dir`."""

    def __init__(self, run_dir: str | Path, keep: int = 2, printer: Callable[[str], None] | None = print):
        self.run_dir = Path(run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.printer = printer
        self.history: list[dict] = []

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if self.printer:
            self.printer(format_epoch(metrics))
        if checkpoint_dir is None:
            return
        target = self.checkpoints / f"epoch-{metrics['epoch']:04d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.move(checkpoint_dir, target)
        if metrics.get("best_epoch") == metrics["epoch"]:
            with publishing_dir(self.checkpoints / "best", replace=True) as staging:
                shutil.copytree(target, staging, dirs_exist_ok=True)
        epochs = sorted(p for p in self.checkpoints.glob("epoch-*") if p.is_dir())
        for old in epochs[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint that can be resumed from; a newer one that cannot (truncated by
        a crash or a full disk) is passed over, and the printer says so."""
        from .checkpoints import readable_checkpoint

        epochs = sorted(p for p in self.checkpoints.glob("epoch-*") if (p / "state.pt").is_file())
        for newest in reversed(epochs):
            problem = readable_checkpoint(newest)
            if problem is None:
                return str(newest)
            if self.printer:
                self.printer(f"checkpoint {newest} cannot be read ({problem}): passed over for an older one")
        return None


def format_epoch(metrics: dict) -> str:
    """One readable progress line per epoch."""
    parts = [
        f"epoch {metrics['epoch'] + 1:>3}/{metrics['total_epochs']}",
        f"{metrics['phase']:<8}",
        f"K={metrics['active_learners']}",
        f"loss {metrics['loss']:.4f}",
    ]
    for key in PROGRESS_METRICS:
        if key in metrics and metrics[key] == metrics[key]:
            parts.append(f"{key} {metrics[key]:.4f}")
    test_recall = PROGRESS_METRICS[1]
    if selected_key(test_recall) in metrics and test_recall not in metrics:
        parts.append(f"(epoch {metrics['best_epoch'] + 1}'s weights: {test_recall} {metrics[selected_key(test_recall)]:.4f})")
    parts.append(f"{metrics['epoch_seconds']:.1f}s")
    if metrics.get("cluster_seconds"):
        parts.append(f"(clustering {metrics['cluster_seconds']:.1f}s)")
    return "  ".join(parts)
