#!/bin/bash
# Our bloom bf16 bench step alone, 3 warm-up and 8 timed steps, freed memory kept mapped: HEAD against HEAD with
# PATCH applied, alternating, twice. Run from the repository root on a clean tree; TAG names the JSONs, EXTRA adds
# config overrides to both sides.
#   TAG=transpose PATCH=$D/blocked_transpose.patch bash $D/ab.sh
#   TAG=bf16logits EXTRA=--config.model.logits_dtype=bfloat16 PATCH=$D/bf16_logits_rounded.patch bash $D/ab.sh
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-bf16-logits}
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
bench() {  # out-name
  echo "$(date -u +%H:%M:%S) $1 load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config configs/bench_bloom.py --config.model.dtype=bfloat16 $EXTRA --steps 8 \
    --warmup 3 --noload_memory --workdir /tmp/bench/ab --out $OUT/$1.json 2>&1 | grep --line-buffered -E "^jax: step"
}
for round in 1 2; do
  bench ${TAG}_head_$round
  git apply $PATCH && bench ${TAG}_patch_$round; git apply -R $PATCH
done
