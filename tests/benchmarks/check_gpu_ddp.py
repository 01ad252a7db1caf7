"""DDP on the GPU path, checked without Ray (for a machine where Ray is not installed).

    python tests/benchmarks/check_gpu_ddp.py [--ranks 2] [--steps 12]

Two processes train one DivideAndConquerNet (ResNet-18, K = 4) wrapped in DistributedDataParallel
the way `platform/train.py` wraps it (`find_unused_parameters`: a step trains one learner's
slice), each step a different learner, bf16 autocast on CUDA. After the steps every rank's
parameters must be bit-identical (DDP averaged the same gradients), and the learners that no step
trained must be unchanged. NCCL where each rank has its own GPU, else Gloo with CUDA tensors (one
GPU shared by both ranks: NCCL refuses two ranks on one device). Prints OK or raises.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank: int, world_size: int, steps: int, init_file: str) -> None:
    from dncml.trainers.model import DivideAndConquerNet
    from dncml.trainers.runtime import make_optimizer
    from dncml.trainers.spec import from_dict

    cuda = torch.cuda.is_available()
    own_gpus = cuda and torch.cuda.device_count() >= world_size
    backend = "nccl" if own_gpus else "gloo"
    device = torch.device(f"cuda:{rank}" if own_gpus else ("cuda" if cuda else "cpu"))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial weights on every rank
    spec = from_dict(dict(dataset="cub", data_root="/unused", backbone="resnet18", image_size=64, d=64, K=4, batch_size=32, m=4, amp=cuda))
    net = DivideAndConquerNet(spec, 3, 100).to(device).train()
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if own_gpus else None, find_unused_parameters=True)
    optimizer, _ = make_optimizer(spec, net)
    untouched_before = net.learner_layers[3].weight.detach().clone()  # learner 3: never trained below
    generator = torch.Generator().manual_seed(rank)  # each rank its own data, as in a real run
    for step in range(steps):
        images = torch.randn(32, 3, 64, 64, generator=generator).to(device)
        labels = (torch.arange(32) // 4).to(device)
        block = (step % 3, step % 3 + 1)  # learners 0, 1, 2 in turn
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = model(images, labels, block)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        spread = max((g - gathered[0]).abs().max().item() for g in gathered)
        moved = (net.learner_layers[3].weight - untouched_before).abs().max().item()
        print(f"backend {backend} on {device}: {steps} steps, loss {loss.item():.4f}")
        print(f"max parameter difference across ranks {spread:.3g}, untrained learner moved {moved:.3g}")
        assert spread == 0.0, "ranks diverged: DDP did not average the same gradients"
        assert moved == 0.0, "a learner that no step trained changed"
        print("OK")
    dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        init_file = os.path.join(folder, "rendezvous")
        mp.spawn(rank_main, args=(args.ranks, args.steps, init_file), nprocs=args.ranks, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
