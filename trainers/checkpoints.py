"""Checkpoints of a run: weights, optimiser, scheduler, the training state and the embedding bank.

A checkpoint directory holds `state.pt` and `spec.yaml`. `state.pt` holds tensors and plain data
only (dicts, lists, numbers, strings), so it is read with `torch.load(weights_only=True)`: a
checkpoint from someone else cannot run code when it is loaded (a pickled object could). Both
files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .files import publish_file
from .grouping import Assignment
from .spec import RunSpec, from_dict


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs to continue identically."""

    epoch: int = 0  # the next epoch to run
    assignment: Assignment | None = None
    best_value: float = float("-inf")
    best_epoch: int = -1
    best_metrics: dict = field(default_factory=dict)  # the selected epoch's selection metric and tie-breaker
    history: list[dict] = field(default_factory=list)
    # `test_eval: selected`: a CPU copy of the selected epoch's weights, tested when the run ends.
    # Saved beside the model (not in `to_plain`) only while it differs from the model's weights.
    selected_model: dict | None = field(default=None, repr=False)

    def to_plain(self) -> dict[str, Any]:
        assignment = self.assignment
        return plain(
            {
                "epoch": self.epoch,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "history": self.history,
                "assignment": None
                if assignment is None
                else {
                    "version": assignment.version,
                    "clusters": assignment.clusters,
                    "num_clusters": assignment.num_clusters,
                    "strategy": assignment.strategy,
                    "cost": assignment.cost,
                    "seconds": assignment.seconds,
                    "repaired": assignment.repaired,
                    "changed": assignment.changed,
                },
            }
        )

    @classmethod
    def from_plain(cls, values: dict[str, Any]) -> TrainState:
        assignment = values.get("assignment")
        if assignment is not None:
            assignment = Assignment(**{**assignment, "clusters": np.asarray(assignment["clusters"], dtype=np.int64)})
        return cls(
            epoch=int(values["epoch"]),
            assignment=assignment,
            best_value=float(values["best_value"]),
            best_epoch=int(values["best_epoch"]),
            best_metrics=dict(values.get("best_metrics") or {}),
            history=list(values.get("history") or []),
        )


def plain(value: Any) -> Any:
    """Tensors and plain data only: numpy arrays become tensors, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def readable_checkpoint(directory: str | Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (None: it can): its files are there and
    `state.pt` opens as tensors and plain data (memory-mapped: nothing is read in full)."""
    path = Path(directory)
    if not (path / "spec.yaml").is_file():
        return "spec.yaml is missing"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.load(path / "state.pt", map_location="cpu", weights_only=True, mmap=True)
        load_checkpoint_spec(str(path))
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    return None


def save_checkpoint(directory: str, spec: RunSpec, net: torch.nn.Module, optimizer, scheduler, state: TrainState, bank=None) -> str:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": plain(scheduler.state_dict()),
        "state": state.to_plain(),
        "bank": plain(bank.state()) if bank is not None else None,
        "selected_model": state.selected_model if state.best_epoch != state.epoch - 1 else None,
    }
    # Serialised in memory, then written: torch.save straight to a file turns a full disk into
    # "[enforce fail at inline_container.cc] unexpected pos", a plain write into ENOSPC's own message.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    publish_file(path / "state.pt", lambda temporary: Path(temporary).write_bytes(buffer.getbuffer()))
    publish_file(path / "spec.yaml", lambda temporary: Path(temporary).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False)))
    return str(path)


def load_checkpoint(directory: str, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's payload; its `state` as a `TrainState`, the bank's arrays as numpy."""
    path = Path(directory) / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"not a dncml checkpoint: {path} is missing")
    try:
        with warnings.catch_warnings():  # torch warns at length about what it refuses: the error says it
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for anything beyond tensors and plain data
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ValueError(f"{path}: not a dncml checkpoint of tensors and plain data, refused ({reason[:300]})") from None
    payload["state"] = TrainState.from_plain(payload["state"])
    payload["state"].selected_model = payload.get("selected_model")
    if payload.get("bank") is not None:
        payload["bank"] = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in payload["bank"].items()}
    return payload


def load_checkpoint_spec(directory: str) -> RunSpec:
    path = Path(directory) / "spec.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"not a dncml checkpoint: {path} is missing")
    return from_dict(yaml.safe_load(path.read_text()))
