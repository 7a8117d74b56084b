#!/usr/bin/env bash
# GPU check of issue 15 for a machine with a CUDA device (none was available when this was written):
# the GPU tests (matching and barrier evaluation on CUDA against the CPU), GLMC weight matching timed on
# the GPU at the Tiny-Shakespeare size and GPT-2 small (goal: <= 30 s for GPT-2 small, 15 rounds, L1),
# and, with --full, the gpu_check profile end to end with per-rule times (goal: <= 8 min).
# Usage: workflow/scripts/gpu_check.sh [--full]   (from the repository root; writes to ${OUT:-results/gpu_check_bench})
set -euo pipefail
out="${OUT:-results/gpu_check_bench}"
mkdir -p "$out"
py=".venv/bin"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
"$py/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.__version__, torch.version.cuda)"
"$py/pytest" tests/test_perf.py -q -rs 2>&1 | tee "$out/tests.log"
for size in ts small; do
  for cost in l1 cosine; do
    timeout 900 "$py/lmcbench" --numerics fast bench matching --size "$size" --rounds 15 --mlp-cost "$cost" \
      --device cuda --out "$out/matching_${size}_${cost}.csv" 2>&1 | grep -v "GLMC weight matching" | tee "$out/matching_${size}_${cost}.txt"
  done
done
if [[ "${1:-}" == "--full" ]]; then
  start=$(date +%s)
  # the README's command for the profile (results/ of this checkout)
  "$py/snakemake" --profile workflow/profiles/workstation --configfile lmcbench/profiles/gpu_check.yaml 2>&1 | tail -n 5
  echo "gpu_check profile end to end: $(( $(date +%s) - start )) s" | tee "$out/profile_time.txt"
  "$py/lmcbench" bench rules --results results --out "$out/rules.csv"
fi
