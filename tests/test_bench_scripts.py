"""The benchmark scripts run (at tiny size, on the CPU): their figures go in the README, and a
script that no longer runs would leave them unverifiable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_cpu():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--tiny"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for section in ("1. training step", "2. JPEG data path", "3. Faiss k-means"):
        assert section in result.stdout
    assert "images/s" in result.stdout and "step time divide / plain" in result.stdout


@pytest.mark.slow
def test_datapath_benchmark_runs_tiny_on_cpu():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_datapath.py"), "--tiny", "--train"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cpu: PIL in" in result.stdout and "gpu path on the CPU: decode_jpeg + tensor ops" in result.stdout
    assert "tensor path on the CPU / PIL workers:" in result.stdout
    assert "from the JPEG files (the tensor path)" in result.stdout and "end to end / synthetic" in result.stdout


@pytest.mark.slow
def test_ddp_check_keeps_ranks_identical_on_cpu():
    # The same script checks DDP on the GPU (gloo or NCCL); here two CPU ranks over gloo.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "check_gpu_ddp.py"), "--ranks", "2", "--steps", "3"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max parameter difference across ranks 0," in result.stdout and result.stdout.rstrip().endswith("OK")


@pytest.mark.slow
def test_store_benchmark_runs_tiny_locally_and_on_a_local_s3_server():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_store.py"), "--tiny"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local store:" in result.stdout and "S3 store" in result.stdout
    assert result.stdout.count("dncml status") == 2 and result.stdout.count("pandas.read_parquet(epochs)") == 2
    assert result.stdout.count("(57 rows)") == 2  # 11 finished trials x 5 epochs, compacted, + the live one's 2 per-epoch rows
