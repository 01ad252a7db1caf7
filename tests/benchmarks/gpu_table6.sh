#!/usr/bin/env bash
# Table 6 of the quick regime at a longer budget on one GPU, without Ray (Ray does not fit the lent
# GPU machine's carry limit): the pretrained GlyphNet, K = 8, 15 divide epochs + 1 conquer epoch
# (the 16-epoch budget where the CPU budget curve closes the gap), 5 groupings x 3 seeds, five
# runs at a time on the one GPU. Each run records into the results store STORE (sweep
# table6_gpu16), which `dncml table` reads like a sweep's.
#   bash tests/benchmarks/gpu_table6.sh STORE
set -uo pipefail
store=${1:?usage: gpu_table6.sh STORE}
export OMP_NUM_THREADS=3
for seed in 0 1 2; do
    for grouping in none kmeans_nosplit random gt_labels kmeans; do
        python3 -m dncml.platform.cli -q train experiments/runs/glyphs_pretrained.yaml --local \
            --set K=8 --set grouping=$grouping --set seed=$seed --set epochs=15 --set finetune_epochs=1 \
            --set device=cuda --set loader_workers=2 \
            --storage "$store" --sweep table6_gpu16 --run-dir "/tmp/table6_gpu16/$grouping-$seed" &
    done
    wait
    echo "seed $seed done at $(date +%T)"
done
# The experiment card, so that `dncml table STORE --experiment table6_grouping` reads the runs.
python3 - "$store" <<'PY'
import sys

from dncml.experiments.loader import load_experiment
from dncml.platform.store import ResultsStore

card = load_experiment("table6_grouping", "quick", overrides=["run.epochs=15"]).card("table6_gpu16")  # the runs above: 15 + 1 epochs
card.update(preset="gpu16", description="quick Table 6 at a 16-epoch budget (15 divide + 1 conquer) on one GPU, without Ray")
ResultsStore(sys.argv[1]).write_card("table6_gpu16", card)
PY
