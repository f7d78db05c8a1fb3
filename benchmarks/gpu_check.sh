#!/usr/bin/env bash
# The GPU check of the full-size architecture (random weights): one command on a GPU node, from the checkout.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#
# It records the machine (nvidia-smi, torch and CUDA versions), then runs `aurora-nb bench --gpu-check` for the 3B
# thinker (fits a 24 GB card) and, when the card has 40 GB or more, the 7B thinker, each with SAM ViT-H, LoRA, bf16 and
# gradient checkpointing, and once more without checkpointing. Each run writes its JSON (peak memory and step times
# next to the memory plan) into OUT_DIR; the scale chapter (nbs/15_scale.ipynb) explains the numbers.
set -euo pipefail
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
AURORA=${AURORA:-aurora-nb}

nvidia-smi > "$OUT/nvidia-smi.txt"
python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'gpu', torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"
GIB=$(python -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30)")

sizes=(full-3b)
if [ "$GIB" -ge 40 ]; then sizes+=(full); fi
for s in "${sizes[@]}"; do
  "$AURORA" bench --gpu-check --sizes "$s" --out "$OUT/$s.json" --no-progress
  "$AURORA" bench --gpu-check --sizes "$s" --no-gradient-checkpointing --out "$OUT/$s-no-checkpointing.json" --no-progress || \
    echo "$s without gradient checkpointing did not fit a ${GIB} GiB card (see above)"
done
echo "results in $OUT"
