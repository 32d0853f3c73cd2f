#!/bin/bash
# On an AVX2-only AMD EPYC (no AVX-512, no bf16 instructions). A first attempt (the seventeenth sitting's warm-up-3
# series, torch in both precisions) spent 22 min in its first run, gemma3 bf16, without finishing and was stopped:
# bf16 without bf16 instructions is emulated on both sides. So: the reference in fp32 only (its faster precision
# where bf16 is emulated), our fp32 step against it, and our bf16 step alone, once per model.
cd /work/main
OUT=benchmarks/results/2026-12-02-cpu-epyc-avx2-step
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
export GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for model in bloom gemma3; do
  if [ $model = bloom ]; then cfg=configs/bench_bloom.py; steps=5; else cfg=configs/bench_bloom.py:gemma3; steps=4; fi
  echo "$(date -u +%H:%M:%S) $model float32 + torch float32, load $(cut -d' ' -f1 /proc/loadavg)"
  /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=float32 \
    --steps $steps --warmup 2 --noload_memory --torch --torch_precision=float32 --workdir /tmp/bench/series \
    --out $OUT/${model}_float32_torch.json 2>&1 | grep -v "^I1202\|^W1202" | tail -4
  rm -rf /tmp/bench/series
  echo "$(date -u +%H:%M:%S) $model bfloat16 alone, load $(cut -d' ' -f1 /proc/loadavg)"
  /tmp/dev/bin/python -m xalign_jax.bench --config $cfg --config.model.dtype=bfloat16 \
    --steps $steps --warmup 2 --noload_memory --workdir /tmp/bench/series \
    --out $OUT/${model}_bfloat16.json 2>&1 | grep -v "^I1202\|^W1202" | tail -4
  rm -rf /tmp/bench/series
done
echo "$(date -u +%H:%M:%S) done"
