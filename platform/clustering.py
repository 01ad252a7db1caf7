"""The clustering actor: one per run, the grouping service of all of the run's train workers.

Each worker sends its shard of cluster-space vectors as an object reference (inside a list, so
Ray hands the actor the reference and the vectors travel from the worker's object store straight
to the actor, never through the driver). When every shard of a round is in, the actor runs
`compute_assignment` once (Faiss k-means on the actor's GPU when it has one, Hungarian matching,
repair) and every waiting worker receives the same versioned assignment.

Faults:
- the actor dies: it is restarted and the workers' pending calls are retried, so their shards
  arrive again. A finished round is also written to the run's state directory (in the results
  store) before it is handed out, as JSON + npz (data, never pickle), so a worker whose answer
  was lost in the crash gets the very same assignment from the restarted actor. Restarts and
  retries are bounded (`MAX_RESTARTS`) and every wait has a timeout (`ROUND_TIMEOUT`): an actor
  that crashes every time fails the run with a clear error instead of hanging it.
- a worker dies: Ray Train restarts the whole worker group from the last checkpoint; the new
  group has a new session id, so its rounds never mix with the dead group's half-finished ones.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time

import numpy as np
import ray

from dncml.trainers.grouping import Assignment, PartitionRequest, compute_assignment, gather_vectors

from .faults import fault_point
from .store import ResultsStore

ACTOR_PREFIX = "dncml-clustering-"
MAX_RESTARTS = 3  # restarts of a crashed actor (and retries of a call) before the run fails
ROUND_TIMEOUT = 3600.0  # seconds a worker waits for one round's answer (the slowest worker's shard included)


def actor_name(run_id: str) -> str:
    return ACTOR_PREFIX + run_id


@ray.remote
class ClusteringActor:
    def __init__(self, run_id: str, store: str | None = None, state_dir: str | None = None):
        self.run_id = run_id
        self.store = ResultsStore(store) if store and state_dir else None
        self.state_dir = state_dir if self.store else None
        self.rounds: dict[tuple[str, int], dict] = {}
        self.log: list[dict] = []
        self.started = time.time()

    def ping(self) -> dict:
        """Who and how big: pid, run, start time and the peak resident memory of the actor."""
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        return {"pid": os.getpid(), "run_id": self.run_id, "started": self.started, "max_rss_bytes": peak}

    def history(self) -> list[dict]:
        """Per-round record: strategy, K, sizes, cost, seconds, the session that asked."""
        return list(self.log)

    def _saved(self, key: tuple[str, int]) -> str | None:
        return f"{self.state_dir}/{key[0]}-round{key[1]:04d}.npz" if self.state_dir else None

    async def partition(self, session: str, request: PartitionRequest, shard_refs: list) -> Assignment:
        fault_point("actor_partition")  # tests crash the actor here
        key = (session, request.round)
        saved = self._saved(key)
        if saved is not None and self.store.is_file(saved):  # answered before a crash of this actor
            return load_round(self.store, saved)
        entry = self.rounds.setdefault(key, {"shards": {}, "event": asyncio.Event(), "result": None, "error": None})
        entry["shards"][request.rank] = (request, shard_refs)
        if len(entry["shards"]) == request.world_size and entry["result"] is None and entry["error"] is None:
            try:
                entry["result"] = await self._compute(entry["shards"], session)
                if saved is not None:
                    save_round(self.store, saved, entry["result"])
            except Exception as error:  # every waiting worker sees the failure, none hangs
                entry["error"] = error
            entry["event"].set()
            for old in [k for k in self.rounds if k[0] == session and k[1] < request.round]:
                del self.rounds[old]  # keep memory flat over a long run
        await entry["event"].wait()
        if entry["error"] is not None:
            raise entry["error"]
        return entry["result"]

    async def _compute(self, shards: dict, session: str) -> Assignment:
        first: PartitionRequest = shards[0][0] if 0 in shards else next(iter(shards.values()))[0]
        vectors = None
        if first.needs_vectors:
            parts = []
            for request, refs in shards.values():
                parts.append((request.indices, await refs[0]))
            vectors = gather_vectors(len(first.labels), parts)
        assignment = await asyncio.to_thread(compute_assignment, first, vectors)
        self.log.append(
            {
                "session": session,
                "round": first.round,
                "strategy": first.strategy,
                "num_clusters": assignment.num_clusters,
                "sizes": assignment.sizes(),
                "cost": assignment.cost,
                "seconds": assignment.seconds,
                "time": time.time(),
            }
        )
        return assignment


def save_round(store: ResultsStore, path: str, assignment: Assignment) -> None:
    """A finished round as data only: the cluster of every sample (npz) and the rest (JSON),
    published whole into the store."""
    scalars = {
        name: getattr(assignment, name) for name in ("version", "num_clusters", "strategy", "cost", "seconds", "repaired", "changed")
    }
    buffer = io.BytesIO()
    np.savez(buffer, clusters=assignment.clusters, meta=np.array(json.dumps({**scalars, "stats": assignment.stats})))
    store.publish(path, buffer.getvalue())


def load_round(store: ResultsStore, path: str) -> Assignment:
    with np.load(io.BytesIO(store.read_bytes(path)), allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        return Assignment(clusters=saved["clusters"].astype(np.int64), **meta)


def start_actor(run_id: str, store: str | None = None, state_dir: str | None = None, num_gpus: float = 0):
    """Create the run's actor (or find the one a resumed run left). num_cpus=0 and the default
    scheduling strategy keep it outside the Tune trial's placement group (else Tune refuses it:
    no trial resources are available). The run id is unique, so an actor serves one run only."""
    return ClusteringActor.options(
        name=actor_name(run_id),
        num_cpus=0,
        num_gpus=num_gpus,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_RESTARTS,
        scheduling_strategy="DEFAULT",
        get_if_exists=True,
    ).remote(run_id, store, state_dir)


class ActorGroupingService:
    """The trainer's `partition` on a Ray Train worker: a call to the run's clustering actor."""

    def __init__(self, run_id: str, session: str):
        self.actor = ray.get_actor(actor_name(run_id))
        self.session = session

    def __call__(self, request: PartitionRequest) -> Assignment:
        shard = [ray.put(np.ascontiguousarray(request.vectors))] if request.vectors is not None else [None]
        vectors, request.vectors = request.vectors, None  # the vectors travel as the object ref only
        try:
            return ray.get(self.actor.partition.remote(self.session, request, shard), timeout=ROUND_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ClusteringFailed(f"round {request.round}: the clustering actor gave no assignment within {ROUND_TIMEOUT:.0f} s") from None
        except ray.exceptions.RayActorError as error:
            cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise ClusteringFailed(
                f"round {request.round}: the clustering actor died and did not recover after {MAX_RESTARTS} restarts ({cause})"
            ) from None
        finally:
            request.vectors = vectors


class ClusteringFailed(RuntimeError):
    """The run's clustering actor cannot hand out an assignment (it keeps crashing, or hangs)."""
