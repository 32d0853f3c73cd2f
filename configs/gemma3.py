"""The embedded default: AFP on the real Gemma-3-270M (base, multilingual), before vs after, on a CPU budget.

Variants (``--config configs/gemma3.py:<variant>``):
  * ``270m`` (default): the README's main job. en + zh + sw, a short alignment run and a fixed evaluation subset
    sized to finish in about 15 minutes on a 2-core CPU (where the time goes: README "Main job").
  * ``270m-sweep``: the same run judged on the DEV splits only (FLORES dev retrieval, dev task items): what the
    hyper-parameters were chosen with (RESULTS.md), so that the test numbers never steered a choice.
  * ``270m-long``: the longest run made on the CPU for RESULTS.md (more steps, 200 items per task and language).
  * ``270m-full``: the full protocol (every test item, 0/5 shots, 3 seeds, 1000 steps) for real hardware.
Scoring is lm-eval's completion rule with logits at continuation tokens only (a third of each row reaches the
262k-word vocabulary); ``--config.eval.scoring=reference --config.eval.score_positions=all`` gives AFP's rule.
"""
from xalign_jax.config_defaults import base_config

BUDGETS = {
    # steps, records per step, CLM rows of 256 tokens, LM-head slots per 2 rows (0: every position), packed
    # contrastive row counts (): one padded row per sentence), eval items per (task, language), shots, seeds, pairs
    "quick": dict(steps=24, batch_size=12, clm_rows=4, head_slots=448, cl_pack_rows=(8, 12, 16), max_items=40,
                  shots=(0,), seeds=(0,), pairs=200),
    "long": dict(steps=96, batch_size=12, clm_rows=4, head_slots=448, cl_pack_rows=(8, 12, 16), max_items=150,
                 shots=(0,), seeds=(0,), pairs=500),
    "full": dict(steps=1000, batch_size=32, clm_rows=16, head_slots=0, cl_pack_rows=(), max_items=0, shots=(0, 5),
                 seeds=(0, 1, 2), pairs=1000),
}
VARIANTS = {"270m": "quick", "270m-sweep": "quick", "270m-long": "long", "270m-full": "full"}
FINE_BUCKETS = (32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 1024, 2048)


def get_config(variant: str = "270m"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {sorted(VARIANTS)}")
    budget = BUDGETS[VARIANTS[variant]]
    config = base_config()
    config.model.source = "gemma3-270m"          # converted from the installed GGUF wheels, never downloaded
    # fp32, the precision the recorded runs (results/) and the reference's evaluation used. On a CPU with bf16
    # instructions --config.model.dtype=bfloat16 trains about 1.2x faster (BENCHMARKS.md), to bf16 rounding.
    config.model.dtype = "float32"
    config.model.remat_policy = "none"
    config.data.recipe_languages = ("en", "zh", "sw")
    config.data.recipe_records = 3000
    config.data.seq_len = 256
    config.data.clm_rows = budget["clm_rows"]
    # The LM head sees only the supervised positions, up to 448 per pair of rows (one CE chunk per pair) instead of
    # all 512: the step 9% faster (BENCHMARKS.md "The main job's LM-head cap"). The pairs' demand peaks at 444 in
    # the quick and long runs' steps, so no record waits for a later step and the batches are the uncapped ones.
    # A cap must hold the longest answer (244 supervised tokens) and a group must not straddle a data shard (groups
    # of 2 rows run on 1 or 2 devices). 270m-full keeps every position: over its 1,000 steps a cap of 448 per pair
    # would hold no record back, but its gain on accelerators is unmeasured and it would limit the run to 8 data
    # shards (benchmarks/results/2026-12-03-full-variant-cap-demand: also its rows' fill, 56%).
    if budget["head_slots"]:
        config.data.update(dict(supervised_cap=budget["head_slots"], supervised_group_rows=2))
    config.data.cl_buckets = (32, 64)
    # The 24 sentences of a step share 8, 12 or 16 rows of their bucket instead of one row each (10.3 rows a step
    # on average, three compiles): the step 12% faster, before_after.md unchanged (BENCHMARKS.md "The main job's
    # contrastive sentences packed"). 270m-full keeps one row per sentence: unmeasured on accelerators.
    config.data.cl_pack_rows = budget["cl_pack_rows"]
    config.objective.pooler = "avg-6"
    config.objective.temperature = 0.05
    config.objective.cl_weight = 1.0
    config.objective.clm_weight = 1.5
    # one CE chunk per row, or per pair of rows under the cap: a rolled chunk loop is slow on CPU
    config.objective.clm_chunk_size = budget["head_slots"] or config.data.seq_len
    config.train.update(dict(steps=budget["steps"], batch_size=budget["batch_size"], lr=3e-5,
                             warmup_steps=max(budget["steps"] // 10, 1), schedule="cosine", log_every=4,
                             checkpoint_every=budget["steps"], keep_checkpoints=1))
    config.eval.update(dict(before_training=True, after_training=True, languages="en,zh,sw",
                            shots=budget["shots"], seeds=budget["seeds"], max_items=budget["max_items"],
                            dev_max_items=budget["max_items"], scoring="completion",
                            score_positions="continuation", buckets=FINE_BUCKETS))
    config.eval.alignment.update(dict(sources=("flores", "tatoeba"), languages=("zh", "sw"), poolers=("avg-6",),
                                      max_pairs=budget["pairs"]))
    if variant == "270m-sweep":
        config.eval.final_split = "dev"
        config.eval.tasks = ("xnli", "pawsx", "xcopa", "xstorycloze")   # XWinograd has no dev part
        config.eval.alignment.update(dict(sources=("flores",), split="dev"))
    if variant == "270m-full":
        config.eval.alignment.poolers = ("avg-6", "last-6")
    return config
