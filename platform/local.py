"""`dncml train --local`: one run in this process, without Ray (the trainer with the local seam).

Checkpoints go to a run directory: by default a new one per run, `runs/<trial id>` (the spec's
name, the start time and a random suffix, as Ray names its runs), so two runs never meet;
`--resume` without `--run-dir` continues the newest `runs/<name>-*` written with the same spec.
With `--storage`, the epochs and the trial row also go to the results store, like a Ray run's. A
run directory belongs to one run: a new run into a directory the user named that holds another
run's checkpoints is refused (it would delete its own newer checkpoints and later resume the old
run's), `--resume` continues only a run of the same spec, and a lease refuses a second process on
the same directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path

import torch

from dncml.analysis.schema import COMPLETED, INTERRUPTED
from dncml.trainers.checkpoints import load_checkpoint, load_checkpoint_spec
from dncml.trainers.divide_and_conquer import train
from dncml.trainers.runtime import resolve_device
from dncml.trainers.seam import LocalRun, Seam, World
from dncml.trainers.spec import RunSpec

from .console import Bar, log, summary
from .errors import PlatformError, RunFailed
from .faults import fault_point
from .store import Lease, ResultsStore, TrialRecorder, new_id, safe_name, selected_test_metrics

RAY_WORKER_CPUS = 1.0  # a Ray Train worker's CPUs unless the resources say otherwise (train.Resources)


def worker_threads(cpus: float = RAY_WORKER_CPUS) -> int:
    """The intra-op threads (torch, OpenMP) a Ray worker of `cpus` CPUs computes with: Ray sets
    $OMP_NUM_THREADS to floor(cpus), at least 1, unless the user set it. The thread count decides
    how a convolution's sums are split, so the same seed gives the same numbers only with the
    same count: a local run uses it too."""
    configured = os.environ.get("OMP_NUM_THREADS")
    return int(configured) if configured and configured.isdigit() and int(configured) > 0 else max(1, math.floor(cpus))


def train_local(
    spec: RunSpec,
    run_dir: str | Path | None = None,
    storage: str | None = None,
    sweep: str = "train",
    resume: bool = False,
    threads: int | None = None,
    setting: str = "",
) -> str | None:
    """Train `spec` here; returns the trial id (None when `--resume` found the run finished).
    run_dir: None = a new `runs/<trial id>` (with resume: the newest run of this spec there).
    threads: torch's intra-op threads for the run (None: those of a default Ray Train worker,
    `worker_threads()`, so that a seed gives the numbers it gives on Ray); restored afterwards.
    setting: the trial row's `setting` (`dncml train --set` passes its assignments)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or worker_threads())
    try:
        return _train_local(spec, run_dir, storage, sweep, resume, setting)
    finally:
        torch.set_num_threads(before)


def _train_local(spec: RunSpec, run_dir: str | Path | None, storage: str | None, sweep: str, resume: bool, setting: str) -> str | None:
    safe_name(sweep, "--sweep")
    if run_dir is None:
        run_dir = default_run_dir(spec, resume)
    run_dir = Path(run_dir)
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
            recorder = TrialRecorder(store, sweep, trial_id, spec, setting=setting) if store else None
            if recorder and resume_from is not None:
                rerecord(recorder, resume_from)

            bar = Bar(spec.total_epochs, spec.name, "epoch", initial=_resumed_epochs(resume_from))

            def report(metrics, checkpoint):
                reporter(metrics, checkpoint)
                # tests crash here (`local_checkpointed_e<epoch>`): the checkpoint is in place, its epoch row not yet
                fault_point(f"local_checkpointed_e{metrics['epoch']}")
                if recorder:
                    recorder.epoch(metrics)
                fault_point("local_recorded")
                value = metrics.get(spec.selection_metric)
                bar.update(1, phase=metrics.get("phase"), loss=f"{metrics['loss']:.4f}", **{spec.selection_metric: _short(value)})

            log.info(
                f"training {spec.name}: {spec.dataset}, grouping {spec.grouping}, K={spec.num_learners}, "
                f"T={spec.recluster_every}, loss {spec.loss}, {spec.total_epochs} epochs; run dir {run_dir}"
            )
            seam = Seam(report=report, world=World(resolve_device(spec)), resume_from=resume_from, checkpoint_root=str(run_dir / "tmp"))
            try:
                state = train(spec, seam)
            except KeyboardInterrupt:
                if recorder:
                    recorder.finish(INTERRUPTED, error="interrupted (Ctrl-C or SIGTERM) before the run finished")
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
            finally:
                bar.close()
            if recorder:
                if recorder.finish(COMPLETED) != COMPLETED:
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


RUNS = Path("runs")


def default_run_dir(spec: RunSpec, resume: bool = False, runs: Path = RUNS) -> Path:
    """`runs/<trial id>`, new for every run; with resume, the newest `runs/<name>-<stamp>-<hex>`
    whose newest checkpoint has this spec (an error naming the candidates when none has)."""
    if not resume:
        return runs / new_id(spec.name)
    pattern = re.compile(rf"{re.escape(spec.name)}-\d{{8}}-\d{{6}}-[0-9a-f]{{6}}")
    candidates = sorted((p for p in runs.glob(f"{spec.name}-*") if p.is_dir() and pattern.fullmatch(p.name)), reverse=True)
    for candidate in candidates:
        saved = sorted(p for p in (candidate / "checkpoints").glob("epoch-*") if (p / "state.pt").is_file())
        if saved and load_checkpoint_spec(saved[-1]).to_dict() == spec.to_dict():
            return candidate
    if candidates:
        raise PlatformError(
            f"--resume: no run of {spec.name!r} under {runs} has this spec (newest: {', '.join(p.name for p in candidates[:3])}); "
            "name the run to continue with --run-dir"
        )
    return runs / new_id(spec.name)  # nothing to continue: the run starts from epoch 1, as with --run-dir


def _resumed_epochs(checkpoint: str | None) -> int:
    """Epochs a resumed run has behind it (its checkpoint `epoch-NNNN` is the last one done)."""
    return int(Path(checkpoint).name.split("-")[-1]) + 1 if checkpoint else 0


def _short(value) -> str | None:
    return f"{value:.4f}" if isinstance(value, float) else None
