"""One divide-and-conquer run on Ray Train: the workers' seam, the trainer, `dncml train`.

The training loop is `dncml.trainers.divide_and_conquer.train`; this module only supplies its
seam on a Ray Train worker: `ray.train.report` with a `Checkpoint`, the run's clustering actor
as the grouping service, DDP through `prepare_model`, and resumption from
`ray.train.get_checkpoint()` (after a worker failure or an interrupted sweep).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch

from dncml.analysis.schema import COMPLETED, INTERRUPTED
from dncml.trainers import spec as runspec
from dncml.trainers.data.base import DatasetError
from dncml.trainers.divide_and_conquer import NonFiniteLoss
from dncml.trainers.seam import Seam, World

from . import console, ray_compat
from .clustering import ActorGroupingService, ClusteringFailed, start_actor
from .console import log, summary, timeline
from .controller import StoreCallback
from .errors import PlatformError, RunFailed
from .faults import fault_point
from .store import ResultsStore, TrialRecorder, new_id, safe_name, spec_differences

# Errors that a retry cannot fix: the run fails at once instead of being restarted (a clustering
# actor that used up its own restarts stays dead for the restarted workers too).
DETERMINISTIC = (NonFiniteLoss, runspec.SpecError, DatasetError, ClusteringFailed)


# -------------------------------------------------------------------------- on the workers
class RayWorld(World):
    def __init__(self):
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        super().__init__(ray.train.torch.get_device())

    def wrap_model(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return module.to(self.device)
        # A step trains one learner: the other slices and their losses are unused in that step.
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())


def _session_id(world: RayWorld) -> str:
    """A fresh id per worker-group start, the same on every rank (rank 0's, broadcast)."""
    session = [uuid.uuid4().hex[:12]]
    if world.world_size > 1:
        torch.distributed.broadcast_object_list(session, src=0)
    return session[0]


def worker_loop(config: dict) -> None:
    """The function every Ray Train worker runs."""
    from dncml.trainers.divide_and_conquer import train

    timeline("worker start", config["run_id"])
    spec = runspec.from_dict(config["spec"])
    world = RayWorld()
    if spec.device == "cuda" and world.device.type != "cuda":
        raise RuntimeError("RunSpec device 'cuda' but this Ray Train worker has no GPU (use --use-gpu)")
    scratch = Path(tempfile.mkdtemp(prefix="dncml-"))
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume_from = checkpoint.to_directory(str(scratch / "resume"))
        if world.is_chief:  # the epochs a crash left out of the store (checkpoint saved, row not yet written)
            from dncml.trainers.checkpoints import load_checkpoint

            history = load_checkpoint(resume_from)["state"].history
            store = ResultsStore(config["store"])
            added = store.record_missing_epochs(config["sweep"], config["trial_id"], history, config["metric_names"])
            if added:
                log.info(f"run {config['run_id']}: re-recorded epoch(s) {', '.join(str(e + 1) for e in added)} from its checkpoint")

    node_id = ray.get_runtime_context().get_node_id()
    session = _session_id(world)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        # Ray keeps the newest checkpoint and the one with the highest `selected_epoch`: the
        # epoch model selection chose (-1 on every other epoch).
        timeline(f"report epoch {metrics['epoch']} after {metrics['epoch_seconds']:.3f} s of epoch", config["run_id"])
        selected = metrics["epoch"] if metrics.get("best_epoch") == metrics["epoch"] else -1
        metrics = {**metrics, "node_id": node_id, "session": session, "selected_epoch": selected}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # Ray has persisted its copy
        timeline("reported", config["run_id"])

    seam = Seam(
        report=report,
        partition=ActorGroupingService(config["run_id"], session),
        world=world,
        resume_from=resume_from,
        checkpoint_root=str(scratch / "checkpoints"),
    )
    timeline("worker ready", config["run_id"])
    try:
        train(spec, seam)
        timeline("worker done", config["run_id"])
    except DETERMINISTIC as error:
        # It would fail the same way on every retry: record it, and end the workers normally so
        # that Ray Train does not restart the group (its retries are for lost nodes and workers).
        if world.is_chief:
            ResultsStore(config["store"]).write_text(config["fatal_file"], f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------ on the driver side
@dataclass
class Resources:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    use_gpu: bool = False
    actor_gpus: float = 0.0  # a GPU (share) for the clustering actor's Faiss k-means; 0: CPU Faiss

    @classmethod
    def from_dict(cls, values: dict) -> Resources:
        return cls(
            num_workers=int(values.get("num_workers", 1)),
            cpus_per_worker=float(values.get("cpus_per_worker", 1.0)),
            gpus_per_worker=float(values.get("gpus_per_worker", 0.0)),
            use_gpu=bool(values.get("use_gpu", False)),
            actor_gpus=float(values.get("actor_gpus", 0.0)),
        )


def lean_trainer(base: type) -> type:
    """`base` (TorchTrainer) without the parts of Ray Train's defaults that cost a trial on a
    small machine seconds and a process each, while giving nothing there (measured with
    `bench_platform.py`):

    * the datasets callback, which starts a `DatasetManager` actor for every run even when the
      run has no Ray Datasets (ours read their own data; the workers accept no shard provider);
    * on a one-node Ray, the placement-group cleaner: a detached actor that asks the state API
      every second whether the controller is alive, so that a controller that dies without
      cleaning up leaves no placement group; stopping it waits up to 12 s at every run's end.
      On one node the run's placement group goes with the sweep's driver anyway;
    * on a one-node Ray, the preemption watcher: an actor per worker group that watches for the
      cluster draining a node (spot instances), for observability; one node has no other node
      to go on with;
    * the controller's 2 s between polls of its workers: a report with a checkpoint waits for
      the next poll, and so does the run's end (a smoke trial spent 2.3 s in its 4 reports and
      4.1 s from the last report to `fit()` returning; every 0.5 s: 0.0 s and 0.9 s). A poll is
      one small call per worker; a missed one is no failure (that takes 10 minutes).

    The last two go through Ray Train's own variables, which the controller reads and a value
    the user set wins over. Multi-node clusters keep the cleaner and the watcher;
    DNCML_LEAN_TRAIN=0 keeps all of Ray Train's defaults."""

    def keep(trainer, callback) -> bool:
        if not lean():
            return True
        name = ray_compat.callback_name(callback)
        if name == ray_compat.PLACEMENT_GROUP_CLEANER:
            return not one_node()
        return name != ray_compat.DATASETS_CALLBACK or bool(trainer.datasets)

    return ray_compat.trainer_subclass(base, keep_callback=keep, controller_env=lean_controller_env)


def lean():
    return os.environ.get("DNCML_LEAN_TRAIN", "1") != "0"


def one_node():
    return len([node for node in ray.nodes() if node.get("Alive")]) == 1


def lean_controller_env() -> dict[str, str]:
    """Ray Train variables that `lean_trainer` sets for the controller, unless set already."""
    if not lean():
        return {}
    env = {ray_compat.HEALTH_CHECK_INTERVAL: "0.5"}
    if one_node():
        env[ray_compat.PREEMPTION_WATCHER] = "0"
    return env


def prepare_data(spec: runspec.RunSpec, num_workers: int = 1):
    """Render / check the dataset on the driver first: a bad dataset fails here, and the workers
    never race to render the same cache. Returns the loaded bundle."""
    import numpy as np

    from dncml.trainers.backbones import build_backbone
    from dncml.trainers.data.loading import load_dataset
    from dncml.trainers.pretrain import resolve_weights
    from dncml.trainers.spec import check_against_data

    bundle = load_dataset(spec, progress=True)
    # every listed image exists (decoding them all: `dncml datasets check --verify-images`); a
    # pack's shards and index were checked when it opened
    if bundle.train.paths is not None and bundle.train.pack is None:
        from dncml.trainers.data.benchmarks import bundle_image_paths, check_files_exist

        check_files_exist(bundle_image_paths(bundle))
    for note in bundle.notes:
        log.warning(f"dataset {spec.dataset}: {note}")
    check_against_data(spec, len(np.unique(bundle.train.labels)), bundle.train.has_groups, num_workers)
    # `pretrained: glyphs` is pre-trained once, here, not by every worker; weights that cannot load fail here
    build_backbone(spec.backbone, bundle.channels, resolve_weights(spec, progress=True))
    return bundle


def fit_run(
    spec: runspec.RunSpec,
    run_id: str,
    resources: Resources,
    store: ResultsStore,
    sweep: str,
    recorder: TrialRecorder,
    extra_callbacks: tuple = (),
    max_failures: int = 2,
):
    """Build and fit the TorchTrainer of one run, with its clustering actor; record the outcome.
    The same name and storage path resume the run from its newest checkpoint (Ray Train V2)."""
    from ray.train.torch import TorchConfig, TorchTrainer

    fatal_file = store.run_path(sweep, run_id, "fatal.txt")
    store.delete(fatal_file)  # a resumed run starts without its last attempt's verdict
    actor = start_actor(run_id, store.address, state_dir=store.run_path(sweep, run_id, "clustering"), num_gpus=resources.actor_gpus)
    storage_path, storage_filesystem = store.ray_storage(sweep)
    scaling = ray.train.ScalingConfig(
        num_workers=resources.num_workers,
        use_gpu=resources.use_gpu,
        resources_per_worker={"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker or 1} if resources.use_gpu else {})},
    )
    trainer = lean_trainer(TorchTrainer)(
        worker_loop,
        train_loop_config={
            "spec": spec.to_dict(),
            "run_id": run_id,
            "store": store.address,
            "fatal_file": fatal_file,
            "sweep": sweep,
            "trial_id": recorder.trial_id,
            "metric_names": list(recorder.metric_names),
        },
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=ray.train.RunConfig(
            name=run_id,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # the newest checkpoint (to resume) and the validation-selected one (to use)
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="selected_epoch", checkpoint_score_order="max"
            ),
            callbacks=[StoreCallback(store.address, sweep, recorder.trial_id, recorder.metric_names), *extra_callbacks],
        ),
    )
    timeline("fit", run_id)
    try:
        result = trainer.fit()
        timeline("fit returned", run_id)
    except KeyboardInterrupt:
        recorder.finish(INTERRUPTED, error="interrupted (Ctrl-C or SIGTERM) before the run finished")
        raise
    except BaseException as error:
        recorder.fail(error)
        raise
    finally:
        try:
            ray.kill(actor)
        except Exception:
            pass
    message = store.read_text(fatal_file)
    if message is not None:
        recorder.fail(message)
        raise RunFailed(f"run {run_id}: {message}")
    if recorder.finish(COMPLETED) != COMPLETED:
        raise RunFailed(f"run {run_id}: {recorder.store.trial_row(sweep, recorder.trial_id)['error']}")
    timeline("recorded", run_id)
    fault_point("after_completed")  # tests interrupt here: the store is ahead of Tune's bookkeeping
    return result


def local_ray_options(**extra) -> dict:
    """`ray.init` arguments of a private local Ray that only this machine can reach: the node's
    address is the loopback, so the GCS, the raylet, the workers and the agents bind 127.0.0.1
    (by default they bind every interface or the node's address), and the dashboard too."""
    return {"address": "local", "include_dashboard": True, "dashboard_host": "127.0.0.1", **ray_compat.loopback_node("127.0.0.1"), **extra}


def _ray_logging_level() -> int:
    """Ray's own logger level: with -q its start-up lines (the local instance, the dashboard) and
    warnings stay out, as the outcome alone is asked for."""
    import logging

    return logging.ERROR if console.verbosity() == console.QUIET else logging.INFO


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`. None: the cluster named by RAY_ADDRESS (which `ray job
    submit` sets for its driver, so a submitted sweep runs on the cluster it was submitted to, with
    the job's runtime environment), else a private local one. An unreachable address is an
    error here, not a hang."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise PlatformError(
            f"Ray address {address!r} is a dashboard URL (what `ray job submit` takes); "
            "give the cluster's HOST:PORT (the GCS, 6379 by default), auto, or ray://HOST:PORT"
        )
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise PlatformError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as error:
            raise PlatformError(
                f"--address {address}: no Ray cluster answers there ({error}); start one with `ray start --head --port={port}`"
            ) from None
    if address in (None, "local"):
        # A private Ray for one sweep: leave out what a laptop does not need, so that each trial
        # starts fewer processes (a spot-preemption watcher per worker group, Train's metrics).
        os.environ.setdefault(ray_compat.PREEMPTION_WATCHER, "0")
        os.environ.setdefault(ray_compat.TRAIN_METRICS, "0")
    try:
        console.handle_sigterm()  # before ray.init too: a SIGTERM while it starts is Ctrl-C as well
        if address in (None, "local"):
            ray.init(
                **local_ray_options(
                    num_cpus=num_cpus, log_to_driver=console.verbosity() >= console.VERBOSE, logging_level=_ray_logging_level()
                )
            )
        else:
            ray.init(address=address, log_to_driver=console.verbosity() >= console.VERBOSE, logging_level=_ray_logging_level())
        console.handle_sigterm()  # ray.init installs a SIGTERM handler that exits at once
    except ConnectionError as error:
        raise PlatformError(f"--address {address}: cannot connect to Ray: {error}") from None
    except Exception as error:
        if "timed out during startup" not in str(error):
            raise
        # Ray waits a fixed 30 s for its own raylet to register; on an overloaded machine (seen
        # here: 2 cores with another sweep running) it gives up. Nothing has run yet.
        raise PlatformError(
            "the local Ray did not start: its node did not register within Ray's fixed 30 s, so this "
            "machine is too busy right now. Nothing was run; try again when the load is lower, or start "
            "Ray once with `ray start --head` and pass --address auto"
        ) from None


def train_on_ray(
    spec: runspec.RunSpec,
    num_workers: int = 1,
    use_gpu: bool = False,
    address: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    sweep: str = "train",
    setting: str = "",
) -> str:
    """`dncml train`: one run on Ray Train workers; its epochs land in the results store.
    setting: the trial row's `setting` (`dncml train --set` passes its assignments)."""
    if num_workers < 1:
        raise PlatformError(f"--num-workers {num_workers}: must be >= 1")
    store = ResultsStore(storage or "results")
    store.check()  # an unreachable store, a missing bucket: one line, before Ray starts
    trial_id = None
    if resume:
        previous = store.latest_run(sweep, spec.name)
        if previous is None:
            log.info(f"no run named {spec.name!r} in {store.where(sweep)}; starting a new one")
        else:
            trial_id = safe_name(str(previous["trial_id"])[:200], f"the trial id of the newest row of {spec.name} in {store.where(sweep)}")
            differences = spec_differences(previous, spec)
            if differences:
                raise PlatformError(
                    f"--resume: run {trial_id} was started with a different spec ("
                    + "; ".join(differences)
                    + "); resume it with the same spec, or give the new run another name"
                )
            if store.finished_trial(sweep, trial_id, spec.total_epochs):
                summary.info(f"run {trial_id} is already completed in {store.where(sweep)}: nothing to resume")
                return trial_id
    trial_id = trial_id or new_id(spec.name)
    prepare_data(spec, num_workers)
    connect(address)
    if use_gpu and not ray.cluster_resources().get("GPU"):
        raise PlatformError("--use-gpu: the Ray cluster has no GPUs")
    resources = Resources(num_workers=num_workers, use_gpu=use_gpu)
    free = ray.cluster_resources().get("CPU", 0)
    if num_workers * resources.cpus_per_worker > free:
        raise PlatformError(f"--num-workers {num_workers} needs {num_workers} CPUs; the cluster has {free:g}")
    log.info(f"run {trial_id}: {num_workers} Ray Train worker(s), store {store.where(sweep)}")
    with store.lease(sweep, trial_id):  # a second `--resume` of this run is refused while it runs
        recorder = TrialRecorder(store, sweep, trial_id, spec, setting=setting)
        stop = threading.Event()
        follower = console.tail_epochs(store, sweep, trial_id, spec.name, spec.selection_metric, stop)
        try:
            fit_run(spec, trial_id, resources, store, sweep, recorder)
        finally:
            stop.set()
            follower.join(10)
    summary.info(f"done: epochs in {store.where(sweep, 'epochs')}, trial row in {store.where(sweep, 'trials')}")
    return trial_id
