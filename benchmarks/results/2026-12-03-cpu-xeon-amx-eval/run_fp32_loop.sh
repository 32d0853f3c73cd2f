#!/bin/bash
# run.sh's workloads again, our bf16 scorer against the loop in fp32 AND bf16: is bf16 the loop's faster precision
# on this CPU, and how far are our bf16 scores from the fp32 loop's (the agreement figures need the fp32 loop)?
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-eval}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
MODEL=${MODEL:-$HOME/.cache/xalign_jax/models/gemma3-270m}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
echo "$(date -u +%H:%M:%S) start, load $(cut -d' ' -f1 /proc/loadavg)"
$PYTHON benchmarks/eval_speed.py --items 100 --model $MODEL --dtypes bfloat16 --reference-dtypes float32,bfloat16 \
  --out $OUT/eval_speed_gemma3_100_bf16_both_loops.json 2>&1 | grep -Ev "^[IW][0-9]{4} |Loading weights"
echo "$(date -u +%H:%M:%S) done"
