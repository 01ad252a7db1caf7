"""The photo data paths side by side (a benchmark, not a test; the suite runs it at --tiny size).

    .venv/bin/python tests/benchmarks/bench_datapath.py [--tiny] [--images 1024] [--batch 64]
        [--workers N] [--repeats 2] [--train]

It writes JPEGs at sizes like Stanford Online Products' (shorter side 300-500 px, longer side up
to 640 px; photo-like content, quality 90; a few greyscale) and measures, on the same files and
batches, images per second of the paper's training transforms (resize 256, random resized crop
224, flip, normalise) through

1. `data_path: cpu`: PIL in `--workers` DataLoader processes (`ImageDataset` + `photo_transforms`);
2. `data_path: gpu` on the CPU: the workers read bytes, the main process decodes each batch with
   `decode_jpeg` and augments it as tensors (`TensorBatches`, device cpu);
3. `data_path: gpu` on CUDA (nvjpeg), when torch sees a GPU.

Passes alternate (cpu, tensor, cpu, tensor, ...) so that a busy machine slows both alike; the
median of `--repeats` passes is printed. With `--train` and a GPU it also measures ResNet-50
training (224 px, bf16 autocast, channels_last, batch `--batch`) on synthetic batches and the
same step fed from the JPEG files through the CUDA tensor path (end to end), and prints the
ratios the issue asks for: decode + augment >= 3x the training rate, end to end within 10 % of
the synthetic rate (with --tiny on the CPU: ResNet-18 at 64 px, a check that the loop runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def write_jpegs(folder: str, count: int, tiny: bool) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        if tiny:
            height, width = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        else:
            short, long = int(rng.integers(300, 501)), int(rng.integers(500, 641))
            height, width = (short, long) if rng.random() < 0.6 else (long, short)
        # photo-like entropy: a smooth background with a few soft blobs (drawn at 1/4 size and
        # scaled up), then sensor noise
        h4, w4 = height // 4 + 1, width // 4 + 1
        y, x = np.mgrid[0:h4, 0:w4].astype(np.float32)
        small = np.empty((h4, w4, 3), np.float32)
        for c in range(3):
            small[..., c] = rng.uniform(40, 200) + rng.uniform(-60, 60) * (x / w4) + rng.uniform(-60, 60) * (y / h4)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h4), rng.uniform(0, w4), rng.uniform(0.05, 0.3) * min(h4, w4)
            small += (rng.uniform(-90, 90, 3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]).astype(np.float32)
        background = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        image = np.asarray(background, np.int16) + rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
        picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        if i % 16 == 15:
            picture = picture.convert("L")
        paths.append(os.path.join(folder, f"{i:05d}.jpg"))
        picture.save(paths[-1], "JPEG", quality=90)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed_pass(batches) -> tuple[float, float]:
    """(images/s, CPU milliseconds per image, workers included) of one pass."""
    started, cpu = time.perf_counter(), cpu_seconds()
    count = 0
    for images, _, _ in batches:
        count += len(images)
    if isinstance(images, torch.Tensor) and images.device.type == "cuda":
        torch.cuda.synchronize()
    del batches, images  # the DataLoader's workers end and are joined: their CPU time counts
    import gc

    gc.collect()
    return count / (time.perf_counter() - started), 1000 * (cpu_seconds() - cpu) / count


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def resnet_rates(
    paths: list[str], batch: int, steps: int, size: int, device: torch.device, backbone: str = "resnet50"
) -> tuple[float, float]:
    """Training images/s of a divide-and-conquer step (learner slice of K = 8) on synthetic
    batches, and fed from the JPEG files by the tensor path on the same device."""
    from dncml.trainers.data.base import ImageSplit
    from dncml.trainers.data.tensor_path import TensorBatches
    from dncml.trainers.model import DivideAndConquerNet
    from dncml.trainers.runtime import make_optimizer
    from dncml.trainers.spec import from_dict

    torch.backends.cudnn.benchmark = True
    spec = from_dict(
        dict(dataset="cub", data_root="/unused", backbone=backbone, image_size=size, d=128, K=8, batch_size=batch, m=4, amp=True)
    )
    net = DivideAndConquerNet(spec, 3, 100).to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(spec, net)[0]
    labels = torch.arange(batch, device=device) // 4

    def step(images, k):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = net(images.to(memory_format=torch.channels_last), labels[: len(images)], (k % 8, k % 8 + 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    synthetic = torch.randn(batch, 3, size, size, device=device)
    for k in range(3):  # cuDNN picks its kernels
        step(synthetic, k)
    sync(device)
    started = time.perf_counter()
    for k in range(steps):
        step(synthetic, k)
    sync(device)
    synthetic_rate = steps * batch / (time.perf_counter() - started)

    order = np.arange(len(paths))
    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    split = ImageSplit("bench", labels=np.zeros(len(paths), np.int64), paths=paths)
    workers = min(8, os.cpu_count() or 1)
    fed = TensorBatches(split, batches, device, train=True, image_size=size, resize=size * 256 // 224, workers=workers)
    count, started = 0, None
    for k, (images, _, _) in enumerate(fed):
        if k == 1:  # after the first batch: workers and nvjpeg started
            sync(device)
            started, count = time.perf_counter(), 0
        step(images, k)
        count += len(images)
    sync(device)
    return synthetic_rate, count / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="48 small images, batch 8, one pass each: a check that it runs")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader processes for both paths (default: CPU count)")
    parser.add_argument("--repeats", type=int, default=2, help="passes of each path, alternating")
    parser.add_argument("--train", action="store_true", help="with a GPU: ResNet-50 training rates, synthetic and from the JPEGs")
    parser.add_argument("--steps", type=int, default=20, help="--train: timed synthetic steps")
    args = parser.parse_args(argv)
    from dncml.trainers.data.base import ImageSplit
    from dncml.trainers.data.tensor_path import TensorBatches
    from dncml.trainers.data.torch_dataset import ImageDataset, photo_transforms

    images, batch, repeats = (48, 8, 1) if args.tiny else (args.images, args.batch, args.repeats)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    where = torch.cuda.get_device_name() if cuda else "no GPU"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, {where}")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        paths = write_jpegs(folder, images, args.tiny)
        sizes = [os.path.getsize(p) for p in paths]
        written = time.perf_counter() - started
        print(f"{images} JPEGs written in {written:.1f} s, mean {np.mean(sizes) / 1024:.0f} KiB; batch {batch}, {workers} workers")
        split = ImageSplit("bench", labels=np.zeros(images, np.int64), paths=paths)
        order = np.random.default_rng(1).permutation(images)
        batches = [order[i : i + batch].tolist() for i in range(0, images, batch)]
        pil = ImageDataset(split, photo_transforms(True, 224, 256, (0.16, 1.0)))
        paths_to_run = {
            f"cpu: PIL in {workers} workers": lambda: torch.utils.data.DataLoader(pil, batch_sampler=batches, num_workers=workers),
            "gpu path on the CPU: decode_jpeg + tensor ops": lambda: TensorBatches(split, batches, "cpu", True, workers=workers),
        }
        if cuda:
            paths_to_run["gpu path on CUDA: nvjpeg + tensor ops"] = lambda: TensorBatches(split, batches, "cuda", True, workers=workers)
            timed_pass(paths_to_run["gpu path on CUDA: nvjpeg + tensor ops"]())  # nvjpeg's handle starts once
        rates: dict[str, list[float]] = {name: [] for name in paths_to_run}
        costs: dict[str, list[float]] = {name: [] for name in paths_to_run}
        for _ in range(repeats):
            for name, make in paths_to_run.items():
                rate, cost = timed_pass(make())
                rates[name].append(rate)
                costs[name].append(cost)
        print("\n== training transforms (resize 256, random resized crop 224, flip, normalise)")
        print(f"{'':<48}{'images/s':>9}{'CPU ms/image':>14}")
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for name, rate in medians.items():
            passes = ", ".join(f"{r:.0f}" for r in rates[name])
            print(f"{name:<48}{rate:>9.0f}{statistics.median(costs[name]):>14.2f}   (passes: {passes} images/s)")
        cpu_name, tensor_name = list(medians)[:2]
        speed = medians[tensor_name] / medians[cpu_name]
        cost = statistics.median(costs[cpu_name]) / statistics.median(costs[tensor_name])
        print(f"tensor path on the CPU / PIL workers: {speed:.2f}x the images/s, {cost:.2f}x the images per CPU second")
        if args.train:
            # on a GPU: ResNet-50 at 224 px; --tiny on the CPU: ResNet-18 at 64 px, a check that it runs
            device = torch.device("cuda" if cuda else "cpu")
            backbone, size, steps = ("resnet50", 224, args.steps) if cuda and not args.tiny else ("resnet18", 64, 2)
            if device.type == "cpu" and not args.tiny:
                print("--train without a GPU: only with --tiny (a check that it runs)")
            else:
                synthetic, fed = resnet_rates(paths, batch, steps, size, device, backbone)
                amp = "bf16 autocast + " if cuda else ""
                print(f"\n== {backbone} training, {size} px, batch {batch}, {amp}channels_last on {device}, images/s")
                print(f"{'synthetic batches':<48}{synthetic:>9.0f}")
                print(f"{'from the JPEG files (the tensor path)':<48}{fed:>9.0f}")
                if cuda:
                    decode = medians["gpu path on CUDA: nvjpeg + tensor ops"]
                    print(f"decode + augment / training: {decode / synthetic:.2f}x (target >= 3)")
                print(f"end to end / synthetic: {fed / synthetic:.3f} (target >= 0.9 on a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
