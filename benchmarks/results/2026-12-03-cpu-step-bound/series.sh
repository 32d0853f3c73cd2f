#!/bin/bash
# The 2026-12-02 rerun's fp32 pair (../2026-12-02-cpu-epyc-avx2-step-rerun/series.sh) again on this sitting's AVX2-only
# AMD EPYC VM, so that bound.py and peak.py read rates of one VM: our fp32 step against the reference's fp32 step,
# alternating, freed memory kept mapped on both sides.
cd /work/main
OUT=benchmarks/results/2026-12-03-cpu-step-bound
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in bloom gemma3; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; steps=5; else cfg=configs/bench_bloom.py:gemma3; steps=4; fi
  echo "$(date -u +%H:%M:%S) $model float32 + torch float32, load $(cut -d' ' -f1 /proc/loadavg)"
  /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=float32 \
    --steps $steps --warmup 2 --noload_memory --torch --torch_precision=float32 --workdir /tmp/bench/series \
    --out $OUT/${model}_float32_torch.json 2>&1 | grep -v "^I1203\|^W1203" | tail -4
  rm -rf /tmp/bench/series
done
echo "$(date -u +%H:%M:%S) done"
