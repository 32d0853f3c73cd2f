"""How much of the 0-shot scorer's time is host work: the real Gemma-3-270M in fp32, 100 items of XCOPA zh and
PAWS-X en at 0 shots, scored as ``benchmarks/eval_speed.py`` scores them (relative reference scores, items as
groups), the best of two timed runs after one that compiles; then each host stage alone, and a profile of one run.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/results/2026-12-03-cpu-scorer-host-time/host_time.py
"""
import cProfile
import pstats
import time

import transformers

from benchmarks import eval_speed
from xalign_jax import models
from xalign_jax.config_defaults import cache_root, default_eval_config
from xalign_jax.evaluation import scorer

directory = cache_root() / "models" / "gemma3-270m"
tok = transformers.AutoTokenizer.from_pretrained(directory)
ours = scorer.Scorer(models.from_pretrained(directory, dtype="float32", param_dtype="float32"), batch_rows=16,
                     reference_scores=default_eval_config().reference_scores)
for task, language in (("xcopa", "zh"), ("pawsx", "en")):
    per_item = eval_speed._prompts(task, language, 0, 100, tok.eos_token)
    groups = eval_speed.item_groups(per_item)
    eval_speed._ours(ours, tok, per_item)
    seconds = min(eval_speed._ours(ours, tok, per_item)[0] for _ in range(2))
    start = time.perf_counter()
    rows = scorer.encode_prompts(tok, [prompt for prompts in per_item for prompt in prompts])
    encode = time.perf_counter() - start
    start = time.perf_counter()
    plan = scorer.plan_scoring(rows, False, groups)
    planning = time.perf_counter() - start
    start = time.perf_counter()
    calls = sum(1 for _ in ours._batches(rows, plan, scorer.cached_prefix_length(rows, plan), groups))
    packing = time.perf_counter() - start
    print(f"{task} {language} 0-shot: {seconds:.3f} s ({len(per_item) / seconds:.1f} items/s); host stages: "
          f"tokenizing {encode * 1e3:.0f} ms, planning {planning * 1e3:.0f} ms, packing {calls} calls "
          f"{packing * 1e3:.0f} ms", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    eval_speed._ours(ours, tok, per_item)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(4)
