#!/usr/bin/env bash
# The GPU figures of the README come from this script, run once on a lent GPU machine (one H100 or
# H200, 16 cores) from the repository root with dncml importable (see the README's GPU section):
#   bash tests/benchmarks/gpu_session.sh 2>&1 | tee gpu.log
# 0. bench_datapath.py --train: the photo data paths side by side on SOP-sized JPEGs (PIL workers,
#    the tensor path on the CPU, the tensor path on CUDA with nvjpeg), then ResNet-50 training on
#    synthetic batches and fed from the JPEG files through the CUDA tensor path (end to end), with
#    the ratios the README reports (decode + augment / training, end to end / synthetic). Plain
#    torch + torchvision only: no Ray, no faiss-gpu (about 2 minutes).
# 1. bench_gpu.py: ResNet-50 training step at 224 px (bf16 + channels_last), divide vs plain; the
#    JPEG data path on GPU and CPU; Faiss k-means at SOP size.
# 2. check_gpu_ddp.py: DDP over two ranks on the GPU, learner slices, ranks stay identical.
# 3. The quick base run (pretrained GlyphNet, K = 4, 6 epochs) trained on the GPU with and without
#    bf16 autocast: wall time and test Recall@1 of each.
set -uo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss; print('torch', torch.__version__, '| faiss', faiss.__version__, '| GPUs Faiss sees:', faiss.get_num_gpus())"
python3 tests/benchmarks/bench_datapath.py --images 4096 --batch 256 --repeats 2 --train --steps 20
python3 tests/benchmarks/bench_gpu.py --batch 256 --steps 30
python3 tests/benchmarks/check_gpu_ddp.py --ranks 2 --steps 12
for amp in true false; do
    echo "== quick base run on the GPU, amp=$amp"
    started=$(date +%s.%N)
    python3 -m dncml.platform.cli train experiments/runs/glyphs_pretrained.yaml --local \
        --set device=cuda --set amp=$amp --run-dir "/tmp/gpu-run-amp-$amp"
    echo "amp=$amp: $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s wall"
done
