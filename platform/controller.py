"""What a run hands Ray Train's controller process: the callback that writes each report's epoch
row to the results store.

Kept apart from `train.py` so that unpickling it in the controller imports only the store and
Ray Train, not the trainer (dncml's trainers, pytorch-metric-learning, SciPy; torch the controller
imports anyway, for Ray's `TorchConfig`): the controller is a new process for every trial, and
those imports were a second of its start-up.
"""

from __future__ import annotations

import ray.train

from .store import ResultsStore


class StoreCallback(ray.train.UserCallback):
    """Writes an epoch row to the results store for every report (runs in the Train controller)."""

    def __init__(self, store_root: str, sweep: str, trial_id: str, metric_names: list[str]):
        self.store_root, self.sweep, self.trial_id, self.metric_names = store_root, sweep, trial_id, metric_names

    def after_report(self, run_context, metrics, checkpoint) -> None:
        reports = metrics if isinstance(metrics, list) else [metrics]
        # Every worker must train on the same assignment: the one the run's actor handed out.
        versions = {(m.get("assignment_version"), m.get("assignment_digest")) for m in reports}
        row = {
            **reports[0],
            "workers": len(reports),
            "workers_agree": len(versions) == 1,
            "node_ids": ",".join(sorted({str(m.get("node_id")) for m in reports})),
            "checkpoint": checkpoint.path if checkpoint is not None else None,
        }
        row.pop("node_id", None)
        row.pop("selected_epoch", None)
        ResultsStore(self.store_root).write_epoch(self.sweep, self.trial_id, row, self.metric_names)
        if len(versions) != 1:
            raise WorkersDisagree(
                f"epoch {row['epoch'] + 1}: the workers trained on different assignments "
                f"(version, digest): {sorted(versions, key=str)}; the epoch is recorded with "
                "workers_agree = False and the run stops"
            )


class WorkersDisagree(RuntimeError):
    """The workers of a run did not train on one assignment: its numbers would mean nothing."""
