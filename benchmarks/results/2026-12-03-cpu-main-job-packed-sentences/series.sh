#!/usr/bin/env bash
# The main job's train step (configs/gemma3.py, the real Gemma-3-270M, fp32) with its contrastive sentences padded
# one per row and packed (data.cl_pack_rows): 1 warm-up step and 5 timed steps each, every batch shape compiled
# first, both drawing the same batches. The runs were made before the config took the packing, with no override
# for padded (the same loop, written out here then); `padded` now states it. Rounds 3 and 4: ROUNDS="3 4".
OUT=${OUT:?set OUT to a results directory} exec "$(dirname "$0")/../../alternate_steps.sh" configs/gemma3.py \
  "padded=--config.data.cl_pack_rows=()" "packed=--config.data.cl_pack_rows=(8,12,16)"
