#!/bin/bash
# Freed memory kept mapped, 3 warm-up steps a side (the first kept-mapped steps of a process grow its heap and ran
# 2-3x slower in the runs before), both models, bf16 and fp32 JAX compute, torch in both precisions.
cd /work/main
OUT=benchmarks/results/2026-12-02-cpu-epyc-bf16-step/kept-mapped-warmup3
mkdir -p $OUT
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in gemma3 bloom; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; else cfg=configs/bench_bloom.py:gemma3; fi
  for dtype in bfloat16 float32; do
    echo "$(date -u +%H:%M:%S) $model $dtype load $(cut -d' ' -f1 /proc/loadavg)"
    /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype \
      --steps 7 --warmup 3 --noload_memory --torch --workdir /tmp/bench/series \
      --out $OUT/${model}_${dtype}.json 2>&1 | grep -v "^I1202\|^W1202" | tail -4
    rm -rf /tmp/bench/series
  done
done
echo "$(date -u +%H:%M:%S) done"
