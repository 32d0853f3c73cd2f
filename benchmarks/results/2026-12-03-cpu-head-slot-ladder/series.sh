#!/bin/bash
# The LM-head slot ladder alone (data.head_slot_buckets=(256,288), rows and sentence buckets fixed: at most three
# compiled shapes) against the fixed shapes, our fp32 step against the reference's fp32 step, alternating, freed
# memory kept mapped on both sides, on the AVX2-only 2-core AMD EPYC. 12 timed steps so that the drawn batches use
# all three head shapes.
cd /work/main
OUT=benchmarks/results/2026-12-03-cpu-head-slot-ladder
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in bloom gemma3; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; else cfg=configs/bench_bloom.py:gemma3; fi
  for shapes in fixed ladder; do
    if [ $shapes = ladder ]; then extra="--config.data.head_slot_buckets=(256,288)"; else extra=""; fi
    echo "$(date -u +%H:%M:%S) $model $shapes, load $(cut -d' ' -f1 /proc/loadavg)"
    /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=float32 $extra \
      --steps 12 --warmup 2 --noload_memory --torch --torch_precision=float32 --workdir /tmp/bench/series \
      --out $OUT/${model}_${shapes}.json 2>&1 | grep -v "^I1203\|^W1203" | tail -4
    rm -rf /tmp/bench/series
  done
done
echo "$(date -u +%H:%M:%S) done"
