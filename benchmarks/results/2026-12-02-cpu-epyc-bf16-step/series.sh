#!/bin/bash
# The train-step series of this change: both allocators, both models, both JAX compute dtypes, torch in both precisions.
cd /work/main
OUT=benchmarks/results/2026-12-02-cpu-epyc-bf16-step
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
KEPT="glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
for alloc in kept-mapped glibc-defaults; do
  mkdir -p $OUT/$alloc
  for model in bloom gemma3; do
    if [ $model = bloom ]; then cfg=configs/bench_bloom.py; n=5; else cfg=configs/bench_bloom.py:gemma3; n=3; fi
    for dtype in bfloat16 float32; do
      echo "$(date -u +%H:%M:%S) $alloc $model $dtype"
      if [ $alloc = kept-mapped ]; then export GLIBC_TUNABLES=$KEPT; else unset GLIBC_TUNABLES; fi
      /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype --steps $n --warmup 1 \
        --noload_memory --torch --workdir /tmp/bench/series --out $OUT/$alloc/${model}_$dtype.json 2>&1 \
        | grep -v "^I1202\|^W1202" | tail -4
      rm -rf /tmp/bench/series
    done
  done
done
echo "$(date -u +%H:%M:%S) done"
