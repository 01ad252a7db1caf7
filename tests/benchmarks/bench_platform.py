"""Ray's cost per trial and the clustering actor's round trip (a benchmark, not a test).

    python tests/benchmarks/bench_platform.py [--quick]
    python tests/benchmarks/bench_platform.py --scale [--points 1000000]
    python tests/benchmarks/bench_platform.py --sequential table6_grouping [--preset quick]

1. Wall time of a nested Tune trial (trial function -> TorchTrainer -> 1 worker) vs the same
   run's training in one process without Ray, for the smoke run (and with --quick a trial of the
   main job), and where the nested trial's time goes (from DNCML_TIMELINE events): Tune's trial,
   Ray Train's start-up, the trainer's set-up, the epochs, the reports, the teardown.
2. Round-trip time of the clustering actor for n = 10k and 60k embeddings of d = 128 (K = 8
   k-means): one worker's request through the actor vs the same `compute_assignment` called
   directly, so the difference is Ray's share.
3. Past SOP (--scale): one round at 1,000,000 x 128 vectors sent by 8 simulated workers (tasks,
   each putting its shard in the object store, as Ray Train workers do): the round's wall time,
   the actor's peak memory and the bytes moved, with all points and with `kmeans_sample`.
4. A sweep against a for-loop (--sequential): an experiment's trials one after another in one
   process without Ray, to set beside the same sweep's wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
ROOT = Path(__file__).resolve().parents[2]


def time_local(spec) -> float:
    from dncml.trainers.divide_and_conquer import train
    from dncml.trainers.seam import Seam

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        train(spec, Seam(report=lambda metrics, checkpoint: None, checkpoint_root=scratch))
    return time.perf_counter() - started


def time_nested(run_file: Path, overrides: dict, name: str) -> float:
    from dncml.platform.sweep import run_sweep

    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch) / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "base": str(run_file), "run": overrides, "grid": {"seed": [0]}}))
        started = time.perf_counter()
        run_sweep(str(spec), storage=str(Path(scratch) / "store"))
        return time.perf_counter() - started


SWEEP_AROUND = "the sweep around the trial (Tune start and end)"


def trial_breakdown(timeline_file: Path, nested_seconds: float) -> list[tuple[str, float]]:
    """Where a nested trial's wall time goes, from the DNCML_TIMELINE events of its processes."""
    events = []
    for line in timeline_file.read_text().splitlines():
        stamp, _pid, _trial, event = line.split(" ", 3)
        events.append((float(stamp), event))
    events.sort()
    first = {}
    for stamp, event in events:
        first.setdefault(event, stamp)
    reports = [(t, e) for t, e in events if e.startswith("report epoch")]
    reported = [t for t, e in events if e == "reported"]
    epoch_seconds = [float(e.split(" after ")[1].split()[0]) for _, e in reports]
    setup = reports[0][0] - first["worker ready"] - epoch_seconds[0]
    reporting = sum(done - start for (start, _), done in zip(reports, reported))
    between = (reports[-1][0] - reports[0][0]) - sum(epoch_seconds[1:]) - sum(d - s for (s, _), d in zip(reports[:-1], reported[:-1]))
    trial = first["recorded"] - first["trial start"]
    return [
        ("Tune trial start -> TorchTrainer.fit (data check, backbone)", first["fit"] - first["trial start"]),
        ("fit -> worker runs (Ray Train controller, worker actors)", first["worker start"] - first["fit"]),
        ("worker set-up (process group, session)", first["worker ready"] - first["worker start"]),
        ("trainer set-up (dataset load, model)", setup),
        (f"{len(epoch_seconds)} epochs (training, clustering, evaluation)", sum(epoch_seconds)),
        ("reports with checkpoints (ray.train.report)", reporting),
        ("between epochs, other", between),
        ("last report -> fit returns (teardown)", first["fit returned"] - reported[-1]),
        ("fit returns -> trial recorded", first["recorded"] - first["fit returned"]),
        (SWEEP_AROUND, nested_seconds - trial),
    ]


def actors_started() -> dict[str, int]:
    """Ray actors started so far in this Ray instance, by class (dead ones included)."""
    from collections import Counter

    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000, raise_on_missing_output=False)
    return dict(Counter(actor.class_name for actor in actors))


def time_sequential(experiment_name: str, preset: str) -> None:
    """An experiment's trials one after another in this process (no Ray), with all the cores'
    threads: what a sweep of the same trials must not be slower than."""
    import torch

    from dncml.experiments.loader import load_experiment

    experiment = load_experiment(experiment_name, preset)
    points = experiment.grid_points()
    print(f"{experiment_name} preset {preset}: {len(points)} trials one after another, {torch.get_num_threads()} torch threads")
    started = time.perf_counter()
    for point in points:
        spec = experiment.run_spec(point)
        seconds = time_local(spec)
        print(f"  {experiment.setting_label(point)} seed={spec.seed}: {seconds:.1f} s", flush=True)
    print(f"all {len(points)} trials: {time.perf_counter() - started:.0f} s (compare: the sweep's own 'done in' line)")


def actor_round_trip(n: int, dim: int = 128, k: int = 8, repeats: int = 3) -> tuple[float, float]:
    import ray

    from dncml.platform.clustering import ClusteringActor
    from dncml.trainers.grouping import PartitionRequest, compute_assignment

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n // 20), 20)[:n]

    def request(round_index):
        return PartitionRequest(
            round=round_index,
            strategy="kmeans",
            num_clusters=k,
            seed=0,
            labels=labels,
            groups=np.zeros(n, np.int64),
            indices=np.arange(n),
            vectors=None,
            kmeans_iterations=20,
        )

    direct = []
    for r in range(repeats):
        started = time.perf_counter()
        compute_assignment(request(r), vectors)
        direct.append(time.perf_counter() - started)
    actor = ClusteringActor.options(num_cpus=0).remote("bench")
    ray.get(actor.ping.remote())
    through = []
    for r in range(repeats):
        started = time.perf_counter()
        ray.get(actor.partition.remote("bench", request(r), [ray.put(vectors)]))
        through.append(time.perf_counter() - started)
    ray.kill(actor)
    return float(np.median(direct)), float(np.median(through))


def scale_round(n: int = 1_000_000, dim: int = 128, workers: int = 8, k: int = 8, sample: int | None = None, iterations: int = 100) -> dict:
    """One clustering round at `n` points from `workers` simulated workers through the actor."""
    import ray

    from dncml.platform.clustering import ClusteringActor
    from dncml.trainers.grouping import PartitionRequest

    labels = np.repeat(np.arange(n // 20), 20)[:n]
    actor = ClusteringActor.options(num_cpus=0).remote("bench-scale")
    ray.get(actor.ping.remote())

    @ray.remote(num_cpus=0)
    def worker(rank: int):
        owned = np.arange(rank, n, workers)
        shard = np.random.default_rng(rank).standard_normal((len(owned), dim)).astype(np.float32)
        request = PartitionRequest(
            round=0,
            strategy="kmeans",
            num_clusters=k,
            seed=0,
            labels=labels,
            groups=np.zeros(n, np.int64),
            indices=owned,
            rank=rank,
            world_size=workers,
            kmeans_iterations=iterations,
            kmeans_sample=sample,
        )
        return ray.get(actor.partition.remote("scale", request, [ray.put(shard)])).version

    started = time.perf_counter()
    versions = ray.get([worker.remote(rank) for rank in range(workers)])
    seconds = time.perf_counter() - started
    peak = ray.get(actor.ping.remote())["max_rss_bytes"]
    ray.kill(actor)
    assert versions == [0] * workers
    return {"seconds": seconds, "peak_gb": peak / 2**30, "moved_gb": n * dim * 4 / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="also time the quick-size run (minutes)")
    parser.add_argument("--scale", action="store_true", help="only section 3: one round past SOP size")
    parser.add_argument("--points", type=int, default=1_000_000, help="--scale: vectors in the round")
    parser.add_argument("--sequential", metavar="EXPERIMENT", help="only: the experiment's trials one after another, no Ray")
    parser.add_argument("--preset", default="quick", help="--sequential: the experiment's preset")
    args = parser.parse_args()
    if args.sequential:
        time_sequential(args.sequential, args.preset)
        return
    import ray

    from dncml.trainers import spec as runspec

    timeline_file = Path(tempfile.mkdtemp(prefix="dncml-timeline-")) / "timeline.log"
    os.environ["DNCML_TIMELINE"] = str(timeline_file)  # before ray.init: Ray's workers inherit it
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    if args.scale:
        print(f"one round, {args.points:,} x 128 vectors from 8 workers, K = 8, 100 k-means iterations")
        print(f"{'centroids trained on':<26}{'round (s)':>11}{'actor peak (GB)':>17}{'moved (GB)':>12}")
        for sample in (None, 100_000):
            figures = scale_round(args.points, sample=sample)
            what = "all points" if sample is None else f"a {sample:,} sample"
            print(f"{what:<26}{figures['seconds']:>11.1f}{figures['peak_gb']:>17.2f}{figures['moved_gb']:>12.2f}", flush=True)
        ray.shutdown()
        return
    sizes = [("smoke", ROOT / "experiments/runs/glyphs_smoke.yaml", {})]
    if args.quick:  # a trial of the main job (the quick presets' run), whole
        sizes.append(("quick", ROOT / "experiments/runs/glyphs_pretrained.yaml", {}))
    breakdowns, costs = {}, {}
    print(f"{'run':<8}{'one process (s)':>17}{'nested trial (s)':>18}{'ratio':>8}{'Ray cost (s)':>14}{'Ray share':>11}")
    for name, run_file, overrides in sizes:
        spec = runspec.load(run_file, overrides)
        time_local(spec)  # warm caches (glyph render, backbone, imports) so both sides start equal
        local = time_local(spec)
        timeline_file.unlink(missing_ok=True)
        nested = time_nested(run_file, overrides, f"bench_{name}")
        breakdowns[name] = trial_breakdown(timeline_file, nested)
        share = (nested - local) / nested
        print(f"{name:<8}{local:>17.1f}{nested:>18.1f}{nested / local:>8.2f}{nested - local:>14.1f}{share:>11.0%}", flush=True)
        costs[name] = (local, nested)
    for name, rows in breakdowns.items():
        print(f"\nwhere the nested {name} trial's wall time goes (DNCML_TIMELINE events)")
        for what, seconds in rows:
            print(f"  {what:<62}{seconds:>8.1f} s")
        # A sweep of many trials starts and ends Tune once: what each further trial costs.
        local, nested = costs[name]
        per_trial = nested - dict(rows)[SWEEP_AROUND]
        ray_seconds = per_trial - local
        print(f"  a trial inside a longer sweep (without Tune's start and end): {ray_seconds:.1f} s of Ray, {ray_seconds / per_trial:.0%}")
    print(f"\nRay actors started by these sweeps, by class: {actors_started()}")
    print("target: Ray's share <= 10 % of a quick trial")
    if importlib.util.find_spec("rfc3987_syntax"):
        print("note: rfc3987-syntax is installed here (JupyterLab pulls it in): every Ray process starts about 1 s slower (see the README)")
    print()
    print(f"{'n':>8}{'direct (s)':>12}{'via actor (s)':>15}{'Ray share (s)':>15}")
    for n in (10_000, 60_000):
        direct, through = actor_round_trip(n)
        print(f"{n:>8}{direct:>12.3f}{through:>15.3f}{through - direct:>15.3f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
