#!/bin/bash
# Our bloom bf16 bench step alone (no --torch), 3 warm-up and 8 timed steps, freed memory kept mapped: HEAD against
# HEAD with ynn_eltwise_bf16_step.patch (XA_BF16 names YNNPACK's fusion kinds for the bf16 step) and against HEAD
# with head_grad_fp32.patch (the LM head's weights cast inside its product, so that their gradient comes out in fp32
# without a bf16 round trip). Each pair alternates, twice. Run from the repository root on a clean tree.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-levers}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
bench() {  # out-name
  echo "$(date -u +%H:%M:%S) $1, load $(cut -d' ' -f1 /proc/loadavg)"
  $PYTHON -m xalign_jax.bench --config configs/bench_bloom.py --config.model.dtype=bfloat16 --steps 8 --warmup 3 \
    --noload_memory --workdir /tmp/bench/levers --out $OUT/$1.json 2>&1 | grep -E "^jax: step"
}
with_patch() {  # patch out-name [env...]
  local patch=$OUT/$1 name=$2; shift 2
  git apply $patch && (for setting in "$@"; do export "$setting"; done; bench $name); git apply -R $patch
}
ELTWISE=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE
for round in 1 2; do
  bench step_head_$round
  with_patch ynn_eltwise_bf16_step.patch step_ynn_eltwise_$round XA_BF16=$ELTWISE
done
for round in 1 2; do
  with_patch head_grad_fp32.patch step_head_grad_fp32_$round
  bench step_head_$((round + 2))
done
