#!/bin/bash
# The headline series with the harness as committed (90ea21a): series.sh with the sides in turns of 4 steps
# (bench --steps_per_turn's default) and 8 timed steps for gemma3 too. Run from the repository root.
TURN=4 GEMMA3_STEPS=8 PREFIX=turns_ bash "$(dirname "$0")/series.sh"
