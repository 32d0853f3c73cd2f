#!/bin/bash
# The train step on a 2-core Intel Xeon VM with AVX-512, avx512_bf16 and AMX (the first machine kind of
# 2026-11-25/30, not seen since): both models, our step in fp32 and in bf16, the reference in both precisions
# (--torch), alternating, freed memory kept mapped on both sides, 2 warm-up steps. Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-step}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in bloom gemma3; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; steps=5; else cfg=configs/bench_bloom.py:gemma3; steps=4; fi
  for dtype in float32 bfloat16; do
    echo "$(date -u +%H:%M:%S) $model $dtype + torch float32 and bf16 autocast, load $(cut -d' ' -f1 /proc/loadavg)"
    $PYTHON -m xalign_jax.bench --config $cfg --config.model.dtype=$dtype --steps $steps --warmup 2 --noload_memory \
      --torch --workdir /tmp/bench/series --out $OUT/${model}_${dtype}_torch.json 2>&1 | grep -Ev "^[IW][0-9]{4} " | tail -5
    rm -rf /tmp/bench/series
  done
done
echo "$(date -u +%H:%M:%S) done"
