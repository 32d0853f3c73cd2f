#!/bin/bash
# Repeats of the gemma3 rows with freed memory kept mapped (5 timed steps), bf16 and fp32 alternating.
cd /work/main
OUT=benchmarks/results/2026-12-02-cpu-epyc-bf16-step/kept-mapped-repeats
mkdir -p $OUT
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for run in 1 2; do
  for dtype in bfloat16 float32; do
    echo "$(date -u +%H:%M:%S) run $run gemma3 $dtype load $(cut -d' ' -f1 /proc/loadavg)"
    /tmp/dev/bin/python -m xalign_jax.bench --config configs/bench_bloom.py:gemma3 --config.model.dtype=$dtype \
      --steps 5 --warmup 1 --noload_memory --torch --workdir /tmp/bench/series \
      --out $OUT/gemma3_${dtype}_run$run.json 2>&1 | grep -v "^I1202\|^W1202" | tail -4
    rm -rf /tmp/bench/series
  done
done
echo "$(date -u +%H:%M:%S) done"
