"""`dncml train --local`: one run in this process, without Ray (the trainer with the local seam).

Checkpoints go to a run directory (default `runs/<name>`); with `--storage`, the epochs and the
trial row also go to the results store, like a Ray run's. A run directory belongs to one run:
a new run into a directory that holds another run's checkpoints is refused (it would delete its
own newer checkpoints and later resume the old run's), `--resume` continues only a run of the same
spec, and a lease refuses a second process on the same directory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from dncml.trainers.checkpoints import load_checkpoint, load_checkpoint_spec
from dncml.trainers.divide_and_conquer import train
from dncml.trainers.runtime import resolve_device
from dncml.trainers.seam import LocalRun, Seam, World
from dncml.trainers.spec import RunSpec

from .console import log, summary
from .errors import PlatformError, RunFailed
from .faults import fault_point
from .store import Lease, ResultsStore, TrialRecorder, new_id, safe_name, selected_test_metrics


def train_local(
    spec: RunSpec, run_dir: str | Path | None = None, storage: str | None = None, sweep: str = "train", resume: bool = False
) -> str | None:
    """Train `spec` here; returns the trial id (None when `--resume` found the run finished)."""
    safe_name(sweep, "--sweep")
    run_dir = Path(run_dir or Path("runs") / spec.name)
    reporter = LocalRun(run_dir, printer=log.info)
    with Lease(run_dir / ".lease.json", f"run directory {run_dir}"):
        resume_from = reporter.latest_checkpoint()
        if resume_from is not None and not resume:
            raise PlatformError(
                f"{run_dir} holds the checkpoints of an earlier run (up to {Path(resume_from).name}): "
                "continue it with --resume, or give this run another --run-dir"
            )
        if resume and resume_from is None:
            log.info(f"no checkpoint in {reporter.checkpoints}; starting from epoch 1")
        if resume_from is not None:
            saved = load_checkpoint_spec(resume_from).to_dict()
            differences = [f"{k}: {v!r} -> {spec.to_dict()[k]!r}" for k, v in saved.items() if spec.to_dict()[k] != v]
            if differences:
                raise PlatformError(
                    f"--resume: {resume_from} was written by a run with a different spec ("
                    + "; ".join(differences)
                    + "); resume with the same spec, or use another --run-dir"
                )
        # One trial id per run directory, so a resumed run replaces its own rows instead of adding some.
        id_file = run_dir / "trial_id"
        if not (resume and id_file.is_file()):
            id_file.write_text(new_id(spec.name))
        # Read back from disk: the same check as a name from the command line (a tampered id
        # would send the rows, the events and the clustering state outside the store).
        trial_id = safe_name(id_file.read_text(errors="replace").strip()[:200], f"the trial id in {id_file}")
        store = ResultsStore(storage) if storage else None
        if store is not None:
            store.check()
        # The store, not the checkpoint's name, says whether the run is completed: a crash between
        # the last checkpoint and its epoch row leaves the run unfinished there.
        last = resume_from is not None and Path(resume_from).name == f"epoch-{spec.total_epochs - 1:04d}"
        if last and (store is None or store.finished_trial(sweep, trial_id, spec.total_epochs)):
            summary.info(f"run in {run_dir} is already completed ({spec.total_epochs} epochs): nothing to resume")
            return None
        leases = contextlib.ExitStack()
        if store:  # in the store too: `dncml status` sees the run live, and a second resume of it is refused
            leases.enter_context(store.lease(sweep, trial_id))
        with leases:
            recorder = TrialRecorder(store, sweep, trial_id, spec) if store else None
            if recorder and resume_from is not None:
                rerecord(recorder, resume_from)

            def report(metrics, checkpoint):
                reporter(metrics, checkpoint)
                # tests crash here (`local_checkpointed_e<epoch>`): the checkpoint is in place, its epoch row not yet
                fault_point(f"local_checkpointed_e{metrics['epoch']}")
                if recorder:
                    recorder.epoch(metrics)
                fault_point("local_recorded")

            log.info(
                f"training {spec.name}: {spec.dataset}, grouping {spec.grouping}, K={spec.num_learners}, "
                f"T={spec.recluster_every}, loss {spec.loss}, {spec.total_epochs} epochs; run dir {run_dir}"
            )
            seam = Seam(report=report, world=World(resolve_device(spec)), resume_from=resume_from, checkpoint_root=str(run_dir / "tmp"))
            try:
                state = train(spec, seam)
            except KeyboardInterrupt:
                if recorder:
                    recorder.finish("interrupted", error="interrupted (Ctrl-C or SIGTERM) before the run finished")
                raise
            except BaseException as error:
                if recorder:
                    try:
                        recorder.fail(error)
                    except OSError as unrecorded:
                        # a full disk: the row stays `running`, which `status` shows as `interrupted?` (no
                        # live lease) and `--resume` continues
                        log.warning(f"the failure could not be recorded in the store ({unrecorded}); `--resume` continues the run")
                raise
            if recorder:
                if recorder.finish("completed") != "completed":
                    raise RunFailed(f"run {trial_id}: {recorder.store.trial_row(sweep, trial_id)['error']}")
                summary.info(f"results appended to {recorder.store.where(recorder.sweep)}")
            tested = selected_test_metrics(state.history)
            summary.info(
                f"best epoch {state.best_epoch + 1} by {spec.selection_metric}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in tested.items() if isinstance(v, float))
            )
            summary.info(f"checkpoints: {reporter.checkpoints} (the selected epoch's: {reporter.checkpoints / 'best'})")
    return trial_id


def rerecord(recorder: TrialRecorder, checkpoint: str) -> None:
    """Write the epoch rows that the checkpoint's history holds and the store lacks: a crash
    between a checkpoint and its epoch row would otherwise lose that epoch for good (the resumed
    run continues after the checkpoint)."""
    recorded = {row["epoch"] for row in recorder.store.epoch_rows(recorder.sweep, recorder.trial_id)}
    missing = [h for h in load_checkpoint(checkpoint)["state"].history if h["epoch"] not in recorded]
    for metrics in missing:
        recorder.epoch(metrics)
    if missing:
        log.info(f"re-recorded epoch(s) {', '.join(str(h['epoch'] + 1) for h in missing)} from {checkpoint}: the store lacked them")
