"""The GPU path, measured (a benchmark, not a test; the suite runs it at --tiny size on the CPU).

    .venv/bin/python tests/benchmarks/bench_gpu.py [--tiny] [--batch 256] [--steps 30]

1. ResNet-50 training at 224 px, bf16 autocast and channels_last, on synthetic batches: images/s
   of a divide-and-conquer step (learner k's slice of K = 8) and of a plain single-embedding step
   (K = 1), interleaved; their ratio.
2. The JPEG data path at 224 px: decoding real JPEG bytes on the GPU (`torchvision.io.decode_jpeg`
   with device="cuda", then resize + crop + normalise on the GPU) vs on the CPU (PIL in a
   DataLoader with worker processes, the platform's photo path), images/s, against the training
   rate of 1: does the data path keep up?
3. Faiss k-means at SOP size (60k x 128, K = 8, 100 iterations) on the GPU when Faiss sees one.

Target (issue 14): >= 2,000 training images/s on one H100 with the data path keeping up.
--tiny: ResNet-18 at 64 px, batch 8, 2 steps, 64 images, 6k points: a check that it all runs.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_training(device: torch.device, backbone: str, size: int, batch: int, steps: int) -> float:
    from dncml.trainers.model import DivideAndConquerNet
    from dncml.trainers.runtime import make_optimizer
    from dncml.trainers.spec import from_dict

    header(f"1. training step: {backbone} at {size} px, batch {batch}, bf16 autocast + channels_last on {device}")
    nets = {}
    for name, k, grouping in (("divide (K=8, learner slice)", 8, "kmeans"), ("plain (K=1)", 1, "none")):
        spec = from_dict(
            dict(
                dataset="cub",
                data_root="/unused",
                backbone=backbone,
                image_size=size,
                d=128,
                K=k,
                grouping=grouping,
                batch_size=batch,
                m=4,
                amp=True,
            )
        )
        net = DivideAndConquerNet(spec, 3, 100).to(device).to(memory_format=torch.channels_last).train()
        nets[name] = (net, make_optimizer(spec, net)[0], k)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.arange(batch, device=device) // 4
    times: dict[str, list[float]] = {name: [] for name in nets}
    for step in range(steps + 2):
        for name, (net, optimizer, k) in nets.items():
            block = (step % k, step % k + 1)
            synchronize(device)
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = net(images, labels, block)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            synchronize(device)
            if step >= 2:  # the first steps pick kernels
                times[name].append(time.perf_counter() - started)
    rates = {name: batch / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"{name:<30}{rate:>10.0f} images/s")
    divide, plain = rates.values()
    print(f"step time divide / plain: {plain / divide:.3f}")
    return divide


def _jpegs(count: int, size: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size + 32, size + 48, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_decode(device: torch.device, size: int, count: int, batch: int, train_rate: float) -> None:
    import torchvision
    from torchvision.transforms import v2

    from dncml.trainers.data.base import ImageSplit
    from dncml.trainers.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, photo_transforms

    header(f"2. JPEG data path at {size} px: {count} images, batch {batch}")
    data = _jpegs(count, size)
    rates = {}
    if device.type == "cuda":
        from torchvision.transforms.v2 import functional as F

        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
        crop = v2.RandomResizedCrop(size, antialias=True)

        def gpu_batch(chunk):
            # nvjpeg decodes the batch; each image is cropped and resized on the GPU as uint8
            # (one small kernel each: the photos differ in size), then one float conversion.
            decoded = torchvision.io.decode_jpeg(chunk, device="cuda")
            crops = [F.resized_crop(image, **crop.make_params([image]), size=[size, size], antialias=True) for image in decoded]
            return (torch.stack(crops).float().div_(255) - mean) / std

        gpu_batch(encoded[:batch])  # nvjpeg's handle and the kernels start up once
        synchronize(device)
        started = time.perf_counter()
        for i in range(0, count, batch):
            gpu_batch(encoded[i : i + batch])
        synchronize(device)
        rates["GPU decode (nvjpeg)"] = count / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, b in enumerate(data):
            paths.append(os.path.join(folder, f"{i}.jpg"))
            with open(paths[-1], "wb") as handle:
                handle.write(b)
        split = ImageSplit("bench", labels=np.zeros(count, np.int64), paths=paths)
        workers = max(1, (os.cpu_count() or 2) - 1)
        loader = torch.utils.data.DataLoader(
            ImageDataset(split, photo_transforms(True, size, size * 256 // 224)), batch_size=batch, num_workers=workers
        )
        started = time.perf_counter()
        for _ in loader:
            pass
        rates[f"CPU decode (PIL, {workers} workers)"] = count / (time.perf_counter() - started)
    for name, rate in rates.items():
        keeps_up = "keeps up" if rate >= train_rate else "too slow"
        print(f"{name:<30}{rate:>10.0f} images/s  ({keeps_up} with training at {train_rate:.0f} images/s)")


def bench_kmeans(n: int) -> None:
    from dncml.trainers.faiss_ops import kmeans, num_gpus

    header(f"3. Faiss k-means, {n} x 128, K = 8, 100 iterations ({'GPU' if num_gpus() else 'CPU'})")
    x = np.random.default_rng(0).standard_normal((n, 128)).astype(np.float32)
    started = time.perf_counter()
    kmeans(x, 8, niter=100)
    print(f"{time.perf_counter() - started:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a check that everything runs (CPU is fine)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"torch {torch.__version__} on {name}")
    if args.tiny:
        rate = bench_training(device, "resnet18", 64, 8, 2)
        bench_decode(device, 64, 64, 16, rate)
        bench_kmeans(6_000)
    else:
        if device.type != "cuda":
            print("no GPU: run with --tiny on a CPU, or on a GPU machine for the real figures")
        torch.backends.cudnn.benchmark = True
        rate = bench_training(device, "resnet50", 224, args.batch, args.steps)
        bench_decode(device, 224, 4 * args.batch, args.batch, rate)
        bench_kmeans(60_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
