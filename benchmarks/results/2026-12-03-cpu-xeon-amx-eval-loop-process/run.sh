#!/bin/bash
# The evaluator against the reference's batch-1 loop with each loop (fp32, bf16) in a process of its own
# (benchmarks/eval_reference.py), on the 2-core Intel Xeon VM with AVX-512, avx512_bf16 and AMX: the real
# Gemma-3-270M (the main job's converted checkpoint), 100 real items per workload, our bf16 scorer. The same
# workloads as ../2026-12-03-cpu-xeon-amx-eval/run_fp32_loop.sh, where the loops ran in the scorer's process.
# Run from the repository root; RUN names the report (1, 2, ...).
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-eval-loop-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
MODEL=${MODEL:-$HOME/.cache/xalign_jax/models/gemma3-270m}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
echo "$(date -u +%H:%M:%S) start, load $(cut -d' ' -f1 /proc/loadavg)"
$PYTHON benchmarks/eval_speed.py --items 100 --model $MODEL --dtypes bfloat16 --reference-dtypes float32,bfloat16 \
  --out $OUT/eval_speed_gemma3_100_bf16_run${RUN:-1}.json 2>&1 | grep --line-buffered -Ev "^[IW][0-9]{4} |Loading weights"
echo "$(date -u +%H:%M:%S) done"
