"""The clustering actor: one per run, the grouping service of all of the run's train workers.

Each worker sends its shard of cluster-space vectors as an object reference (inside a list, so
Ray hands the actor the reference and the vectors travel from the worker's object store straight
to the actor, never through the driver). When every shard of a round is in, the actor runs
`compute_assignment` once (Faiss k-means on the actor's GPU when it has one, Hungarian matching,
repair) and every waiting worker receives the same versioned assignment.

Faults:
- the actor dies: it is restarted (max_restarts) and the workers' pending calls are retried
  (max_task_retries), so their shards arrive again. A finished round is also written to the
  run's state directory before it is handed out, so a worker whose answer was lost in the crash
  gets the very same assignment from the restarted actor.
- a worker dies: Ray Train restarts the whole worker group from the last checkpoint; the new
  group has a new session id, so its rounds never mix with the dead group's half-finished ones.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import time
from pathlib import Path

import numpy as np
import ray

from dncml.trainers.grouping import Assignment, PartitionRequest, compute_assignment, gather_vectors

ACTOR_PREFIX = "dncml-clustering-"


def actor_name(run_id: str) -> str:
    return ACTOR_PREFIX + run_id


@ray.remote
class ClusteringActor:
    def __init__(self, run_id: str, state_dir: str | None = None):
        self.run_id = run_id
        self.state_dir = Path(state_dir) if state_dir else None
        self.rounds: dict[tuple[str, int], dict] = {}
        self.log: list[dict] = []
        self.started = time.time()

    def ping(self) -> dict:
        return {"pid": os.getpid(), "run_id": self.run_id, "started": self.started}

    def history(self) -> list[dict]:
        """Per-round record: strategy, K, sizes, cost, seconds, the session that asked."""
        return list(self.log)

    def _saved(self, key: tuple[str, int]) -> Path | None:
        return self.state_dir / f"{key[0]}-round{key[1]:04d}.pkl" if self.state_dir else None

    async def partition(self, session: str, request: PartitionRequest, shard_refs: list) -> Assignment:
        key = (session, request.round)
        saved = self._saved(key)
        if saved is not None and saved.is_file():  # answered before a crash of this actor
            return pickle.loads(saved.read_bytes())
        entry = self.rounds.setdefault(key, {"shards": {}, "event": asyncio.Event(), "result": None, "error": None})
        entry["shards"][request.rank] = (request, shard_refs)
        if len(entry["shards"]) == request.world_size and entry["result"] is None and entry["error"] is None:
            try:
                entry["result"] = await self._compute(entry["shards"], session)
                if saved is not None:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    temporary = saved.with_suffix(".tmp")
                    temporary.write_bytes(pickle.dumps(entry["result"]))
                    os.replace(temporary, saved)
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
        self.log.append({"session": session, "round": first.round, "strategy": first.strategy,
                         "num_clusters": assignment.num_clusters, "sizes": assignment.sizes(),
                         "cost": assignment.cost, "seconds": assignment.seconds, "time": time.time()})
        return assignment


def start_actor(run_id: str, state_dir: str | None = None, num_gpus: float = 0):
    """Create the run's actor. num_cpus=0 and the default scheduling strategy keep it outside the
    Tune trial's placement group (else Tune refuses it: no trial resources are available)."""
    return ClusteringActor.options(
        name=actor_name(run_id), num_cpus=0, num_gpus=num_gpus, max_restarts=-1, max_task_retries=-1,
        scheduling_strategy="DEFAULT", get_if_exists=True,
    ).remote(run_id, state_dir)


class ActorGroupingService:
    """The trainer's `partition` on a Ray Train worker: a call to the run's clustering actor."""

    def __init__(self, run_id: str, session: str):
        self.actor = ray.get_actor(actor_name(run_id))
        self.session = session

    def __call__(self, request: PartitionRequest) -> Assignment:
        shard = [ray.put(np.ascontiguousarray(request.vectors))] if request.vectors is not None else [None]
        vectors, request.vectors = request.vectors, None  # the vectors travel as the object ref only
        try:
            return ray.get(self.actor.partition.remote(self.session, request, shard))
        finally:
            request.vectors = vectors
