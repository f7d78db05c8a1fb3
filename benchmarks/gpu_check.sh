#!/usr/bin/env bash
# The GPU check of the full-size architecture (random weights): one command on a GPU node, from the checkout.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#
# It records the machine (nvidia-smi, torch and CUDA versions), then runs `aurora-nb bench --gpu-check` for the 3B
# thinker (fits a 24 GB card) and, when the card has 40 GB or more, the 7B thinker, each with SAM ViT-H, LoRA, bf16 and
# gradient checkpointing, and once more without checkpointing. Each run goes through every stage's device path once
# (stored teacher targets, a stage-1 step with distillation, a GRPO group, stage 2's search and correction, evaluate,
# infer) and prints one line per step:
#
#   status       ok, failed: <error> (the JSON keeps the traceback) or skipped (a step it needs failed)
#   ran on       the device of every LLM layer, encoder and mask decoder that ran in the step: must be the GPU;
#                `cpu` there is a model that was loaded and never placed
#   rows/tokens  the batch: sequences and tokens per sequence (generation: the prompt)
#   s            seconds: trainer rows one optimizer step, generation rows one batch of eval.max_new_tokens
#   peak GiB     torch.cuda.max_memory_allocated during the step, next to `planned GiB`, the memory plan's peak
#
# The JSON of each run goes into OUT_DIR; the scale chapter (nbs/15_scale.ipynb, "The GPU check") explains the table.
# The scratch folder (the benchmark and the saved model, about 20 GB at 7B) goes under OUT_DIR and is removed after.
# Extra arguments go through AURORA_ARGS, e.g. AURORA_ARGS="eval.max_new_tokens=256" for a quicker run.
# The script's exit code is 1 when any step of the checkpointed runs failed.
set -uo pipefail
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
AURORA=${AURORA:-aurora-nb}
read -r -a EXTRA <<< "${AURORA_ARGS:-}"

nvidia-smi > "$OUT/nvidia-smi.txt" || { echo "nvidia-smi failed: no GPU on this machine?"; exit 2; }
python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'gpu', torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"
GIB=$(python -c "import torch; print(torch.cuda.get_device_properties(0).total_memory // 2**30)")

sizes=(full-3b)
if [ "$GIB" -ge 40 ]; then sizes+=(full); fi
failed=0
for s in "${sizes[@]}"; do
  "$AURORA" bench --gpu-check --sizes "$s" --work-dir "$OUT" --out "$OUT/$s.json" --no-progress "${EXTRA[@]}" \
    || { failed=1; echo "$s: a step failed (see the table above and $OUT/$s.json)"; }
  "$AURORA" bench --gpu-check --sizes "$s" --no-gradient-checkpointing --work-dir "$OUT" --out "$OUT/$s-no-checkpointing.json" \
    --no-progress "${EXTRA[@]}" || echo "$s without gradient checkpointing: a step failed or did not fit a ${GIB} GiB card (see above)"
done
echo "results in $OUT"
exit $failed
