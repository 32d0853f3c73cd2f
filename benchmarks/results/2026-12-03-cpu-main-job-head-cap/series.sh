#!/usr/bin/env bash
# The main job's train step (configs/gemma3.py, the real Gemma-3-270M, fp32) with and without an LM-head cap,
# alternating, one process per run, 1 warm-up (compiling) step and 3 timed steps each.
set -u
cd /work/main
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
OUT=${OUT:?set OUT to a results directory}
# The runs were made before configs/gemma3.py took the cap; NONE now states the uncapped settings of that time,
# and PADDED the contrastive layout of that time (one row per sentence; the config packs them since).
PADDED="--config.data.cl_pack_rows=()"
NONE="$PADDED --config.data.supervised_cap=0 --config.data.supervised_group_rows=1 --config.objective.clm_chunk_size=256"
CAP4="$PADDED --config.data.supervised_cap=768 --config.data.supervised_group_rows=4 --config.objective.clm_chunk_size=768"
CAP2="$PADDED --config.data.supervised_cap=448 --config.data.supervised_group_rows=2 --config.objective.clm_chunk_size=448"
for round in 1 2; do
  for name in none cap4 cap2; do
    case $name in none) extra=$NONE;; cap4) extra=$CAP4;; cap2) extra=$CAP2;; esac
    /usr/bin/time -v /tmp/dev/bin/python -m xalign_jax.bench --config configs/gemma3.py $extra \
      --steps 3 --warmup 1 --noload_memory --out $OUT/${name}_r${round}.json > $OUT/${name}_r${round}.log 2>&1
    echo "$name round $round exit $?"
  done
done
