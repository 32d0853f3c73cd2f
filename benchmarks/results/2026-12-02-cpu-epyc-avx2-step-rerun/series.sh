#!/bin/bash
# The eighteenth sitting's fp32 pair (../2026-12-02-cpu-epyc-avx2-step/series.sh) again, on another AVX2-only AMD
# EPYC VM of the same kind (no AVX-512, no bf16 instructions): our fp32 step against the reference's fp32 step,
# alternating, freed memory kept mapped on both sides. Our bf16 step (emulated here) is left out.
cd /work/main
OUT=${OUT:-benchmarks/results/2026-12-02-cpu-epyc-avx2-step-rerun}    # another folder: OUT=DIR bash series.sh
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in bloom gemma3; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; steps=5; else cfg=configs/bench_bloom.py:gemma3; steps=4; fi
  echo "$(date -u +%H:%M:%S) $model float32 + torch float32, load $(cut -d' ' -f1 /proc/loadavg)"
  /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=float32 \
    --steps $steps --warmup 2 --noload_memory --torch --torch_precision=float32 --workdir /tmp/bench/series \
    --out $OUT/${model}_float32_torch.json 2>&1 | grep -Ev "^[IW][0-9]{4} " | tail -4
  rm -rf /tmp/bench/series
done
echo "$(date -u +%H:%M:%S) done"
