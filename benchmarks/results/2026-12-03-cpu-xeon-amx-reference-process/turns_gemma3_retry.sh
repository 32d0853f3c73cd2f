#!/bin/bash
# turns.sh's gemma3 bf16-against-bf16 run again with 6 timed steps (the 8-step run was killed for memory; the
# 6-step pair had fit in counters.sh). Same environment as series.sh. Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-reference-process}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
echo "$(date -u +%H:%M:%S) gemma3 ours bfloat16, reference bf16_autocast, load $(cut -d' ' -f1 /proc/loadavg)"
$PYTHON -m xalign_jax.bench --config configs/bench_bloom.py:gemma3 --config.model.dtype=bfloat16 --steps 6 \
  --warmup 3 --noload_memory --torch --torch_precision bf16_autocast --workdir /tmp/bench/retry \
  --out $OUT/turns_gemma3_bfloat16_bf16_autocast.json 2>&1 | grep -Ev "^[IW][0-9]{4} " | grep -E "^(jax|torch|speed)"
echo "exit ${PIPESTATUS[0]}"
rm -rf /tmp/bench/retry
echo "$(date -u +%H:%M:%S) done"
