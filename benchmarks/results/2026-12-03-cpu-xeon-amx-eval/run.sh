#!/bin/bash
# The evaluator against the reference's batch-1 loop on a 2-core Intel Xeon VM with AVX-512, avx512_bf16 and AMX:
# the real Gemma-3-270M (the main job's converted checkpoint), 100 real items per workload, bf16 on both sides (the
# faster precision on both where bf16 instructions exist: BENCHMARKS.md, "The evaluator in bf16 on a CPU").
# Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-eval}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
MODEL=${MODEL:-$HOME/.cache/xalign_jax/models/gemma3-270m}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
echo "$(date -u +%H:%M:%S) start, load $(cut -d' ' -f1 /proc/loadavg)"
$PYTHON benchmarks/eval_speed.py --items 100 --model $MODEL --dtypes bfloat16 --reference-dtypes bfloat16 \
  --out $OUT/eval_speed_gemma3_100_bf16.json 2>&1 | grep -Ev "^[IW][0-9]{4} "
echo "$(date -u +%H:%M:%S) done"
