#!/bin/bash
# Our bf16 scorer with the model's blocks scanned (the default) and unrolled (--unroll-layers, model.unroll_layers,
# which made the bf16 train step 17-29% faster on this CPU), alternating, twice: the real Gemma-3-270M, 40 real items
# per workload, against the bf16 loop only (its items/s are not the point here). Run from the repository root.
OUT=${OUT:-benchmarks/results/2026-12-03-cpu-xeon-amx-levers}
PYTHON=${PYTHON:-/tmp/dev/bin/python}
MODEL=${MODEL:-$HOME/.cache/xalign_jax/models/gemma3-270m}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
for round in 1 2; do
  for layers in scan unroll; do
    flag=$([ $layers = unroll ] && echo --unroll-layers)
    $PYTHON benchmarks/eval_speed.py --items 40 --model $MODEL --dtypes bfloat16 --reference-dtypes bfloat16 $flag \
      --out $OUT/eval_${layers}_$round.json > /dev/null 2>&1
    $PYTHON -c "import json; r = json.load(open('$OUT/eval_${layers}_$round.json'))
print('${layers}_$round', ' '.join('%s %d-shot %.1f items/s, first call %.1f s' % (x['task'], x['shots'],
      x['ours_bfloat16_items_per_s'], x['ours_bfloat16_first_call_s']) for x in r['results']))"
  done
done
