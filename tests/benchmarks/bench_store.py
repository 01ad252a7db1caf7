"""The results store at the size of a big sweep (a benchmark, not a test).

    python tests/benchmarks/bench_store.py [--trials 1000] [--epochs 200] [--no-s3] [--tiny]

Fills a store with `--trials` synthetic trials x `--epochs` epochs through the store's own
writer (`ResultsStore.write_trial`, and `write_epochs`: a finished trial's epochs in the one
compacted file a trial ends in; the last trial stays `running` with per-epoch files, as a live
sweep has), the ended trials merged into segments as the sweep's driver merges them
(`compact_sweep` after every trial), then times, each in a fresh process (interpreter start included) with its peak
memory:

1. `dncml status STORE`
2. `dncml table STORE --experiment bench`
3. a plain `pandas.read_parquet(STORE/<sweep>/epochs)` (with the store's pyarrow filesystem)

locally and against a local S3-compatible server (moto's standalone server on 127.0.0.1, started
here unless AWS_ENDPOINT_URL is set), and prints the figures and the number of files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the suite's local S3 server, shared with conftest
from local_s3 import moto_server  # noqa: E402

METRICS = ["val_recall@1", "val_nmi", "test_recall@1", "test_recall@2", "test_nmi", "test_map@r"]
SWEEP = "bench-default-20260101-000000-abcdef"


def fill(uri: str, trials: int, epochs: int) -> tuple[float, int]:
    """The store filled through its own writer; (seconds, files written)."""
    from dncml.platform.store import ResultsStore, TrialRecorder, _row_table
    from dncml.trainers.spec import from_dict

    store = ResultsStore(uri)
    store.write_card(
        SWEEP,
        {"experiment": "bench", "preset": "default", "sweep": SWEEP, "rows": ["seed"], "metric": "val_recall@1", "mode": "max"}
        | {"grid": {"seed": list(range(trials))}, "table": {"metrics": ["test_recall@1", "test_nmi"]}},
    )
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for t in range(trials):
        spec = from_dict({"seed": t, "warmup_epochs": 0, "epochs": epochs - 1, "finetune_epochs": 1})
        recorder = TrialRecorder(store, SWEEP, f"trial_{t:05d}", spec, "bench", f"seed={t}", metric_names=METRICS, start=False)
        rows = []
        for epoch in range(epochs):
            row = {"epoch": epoch, "total_epochs": epochs, "phase": "divide", "loss": float(rng.random()), "steps": 100}
            row |= {"train_seconds": 1.0, "epoch_seconds": 1.2, "best_epoch": epoch, "lr": 1e-3, "active_learners": 4}
            row |= {name: float(rng.random()) for name in METRICS}
            rows.append(row)
        last = t == trials - 1
        if last:  # a live trial: per-epoch files, not compacted yet
            recorder._write("running")
            for row in rows[: epochs // 2]:
                table = _row_table({**row, "sweep": SWEEP, "trial_id": recorder.trial_id}, store._epoch_types(METRICS))
                store.write_table(table, store.path(SWEEP, "epochs", f"{recorder.trial_id}-e{row['epoch']:04d}.parquet"))
        else:
            store.write_epochs(SWEEP, recorder.trial_id, rows, METRICS)
            recorder.history = rows
            recorder._write("completed")
            store.compact_sweep(SWEEP)  # what the sweep's driver does whenever a trial ends
    files = len(store.files(store.path(SWEEP, "epochs"))) + len(store.files(store.path(SWEEP, "trials")))
    return time.perf_counter() - started, files + 1


def peak_of(command: list[str]) -> tuple[float, float, str]:
    """(seconds, peak resident MiB, the first line of its output) of `command` in a fresh
    process: a small wrapper runs it, so the peak is that process's alone."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "s = time.perf_counter() - t\n"
        "sys.stderr.write(p.stderr.decode()[-2000:]) if p.returncode else None\n"
        "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p.returncode)\n"
        "print(p.stdout.decode().strip().splitlines()[0][:100] if p.stdout.strip() else '')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, cwd=ROOT)
    lines = result.stdout.splitlines()
    seconds, peak, rc = lines[0].split()
    if rc != "0":
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    return float(seconds), float(peak), lines[1] if len(lines) > 1 else ""


READ = (
    "import sys, pandas as pd, pyarrow.fs as fs\n"
    "uri = sys.argv[1]\n"
    "f, p = (fs.FileSystem.from_uri(uri) if '://' in uri else (fs.LocalFileSystem(), uri))\n"
    "frame = pd.read_parquet(p + '/' + sys.argv[2] + '/epochs', filesystem=f)\n"
    "print(len(frame), 'rows')\n"
)


def measure(uri: str, trials: int, epochs: int) -> None:
    seconds, files = fill(uri, trials, epochs)
    print(f"  filled {trials} trials x {epochs} epochs in {seconds:.1f} s: {files} files")
    cli = [sys.executable, "-m", "dncml.platform.cli"]
    for label, command in (
        ("dncml status", [*cli, "status", uri]),
        ("dncml table", [*cli, "table", uri, "--experiment", "bench"]),
        ("pandas.read_parquet(epochs)", [sys.executable, "-c", READ, uri, SWEEP]),
    ):
        seconds, peak, first = peak_of(command)
        print(f"  {label:<30} {seconds:6.2f} s   peak {peak:6.0f} MiB   ({first})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--no-s3", action="store_true", help="only the local store")
    parser.add_argument("--tiny", action="store_true", help="12 trials x 5 epochs (the suite's smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.trials, args.epochs = 12, 5
    print(f"bench_store: {args.trials} trials x {args.epochs} epochs, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        print("local store:")
        measure(str(Path(scratch) / "store"), args.trials, args.epochs)
    if args.no_s3:
        return
    with contextlib.ExitStack() as stack:
        if not os.environ.get("AWS_ENDPOINT_URL"):  # else the server it names
            endpoint = stack.enter_context(moto_server())
            credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8), "AWS_DEFAULT_REGION": "us-east-1"}
            os.environ.update(AWS_ENDPOINT_URL=endpoint, **credentials)
        import boto3

        bucket = "dncml-bench"
        client = boto3.client("s3")
        if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=bucket)
        prefix = f"s3://{bucket}/bench-{secrets.token_hex(3)}"
        print(f"S3 store (local S3 server at {os.environ['AWS_ENDPOINT_URL']}):")
        measure(prefix, args.trials, args.epochs)


if __name__ == "__main__":
    main()
