#!/bin/bash
# Our bf16 bench steps alone (bloom, gemma3), 3 warm-up and 8 timed steps, under glibc's default allocator and with
# freed memory kept mapped, alternating, twice. Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-bf16-logits}
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
KEPT=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
bench() {  # config out-name [GLIBC_TUNABLES]
  echo "$(date -u +%H:%M:%S) $2 load $(cut -d' ' -f1 /proc/loadavg)"
  GLIBC_TUNABLES=$3 $PYTHON -m xalign_jax.bench --config $1 --config.model.dtype=bfloat16 --steps 8 --warmup 3 \
    --noload_memory --workdir /tmp/bench/alloc --out $OUT/$2.json 2>&1 | grep --line-buffered -E "^jax: (step|per)"
}
for round in 1 2; do
  for model in bloom gemma3; do
    config=configs/bench_bloom.py:$model
    bench $config alloc_${model}_default_$round ""
    bench $config alloc_${model}_kept_$round $KEPT
  done
done
