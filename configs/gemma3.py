"""The embedded default: AFP on the real Gemma-3-270M (base, multilingual), before vs after, on a CPU budget.

Variants (``--config configs/gemma3.py:<variant>``):
  * ``270m`` (default): the README's main job. en + zh + sw, a short alignment run and a fixed evaluation subset
    sized to finish in about 15 minutes on a 2-core CPU (where the time goes: README "Main job").
  * ``270m-full``: the full protocol (every test item, 0/5 shots, 3 seeds, more steps) for real hardware.
Hyper-parameters and how they were chosen: RESULTS.md.
"""
from xalign_jax.config_defaults import base_config

BUDGETS = {
    # steps, records per step, CLM rows, eval items per (task, language), shots, seeds, alignment pairs
    "quick": dict(steps=80, batch_size=16, clm_rows=2, max_items=40, shots=(0,), seeds=(0,), pairs=200),
    "full": dict(steps=1000, batch_size=32, clm_rows=16, max_items=0, shots=(0, 5), seeds=(0, 1, 2), pairs=1000),
}


def get_config(variant: str = "270m"):
    size, _, budget_name = variant.partition("-")
    if size != "270m" or budget_name not in ("", "full"):
        raise ValueError(f"unknown variant {variant!r}: use 270m or 270m-full")
    budget = BUDGETS["full" if budget_name else "quick"]
    config = base_config()
    config.model.source = "gemma3-270m"          # converted from the installed GGUF wheels, never downloaded
    config.model.dtype = "float32"               # CPU: bf16 matmuls are emulated and slower
    config.model.remat_policy = "none"
    config.data.recipe_languages = ("en", "zh", "sw")
    config.data.recipe_records = 3000
    config.data.seq_len = 128
    config.data.clm_rows = budget["clm_rows"]
    config.data.cl_buckets = (32, 64)
    config.objective.pooler = "avg-6"
    config.objective.temperature = 0.05
    config.objective.cl_weight = 1.0
    config.objective.clm_weight = 1.5
    config.train.update(dict(steps=budget["steps"], batch_size=budget["batch_size"], lr=2e-5,
                             warmup_steps=max(budget["steps"] // 20, 1), schedule="cosine", log_every=5,
                             checkpoint_every=budget["steps"], keep_checkpoints=1))
    config.eval.update(dict(before_training=True, after_training=True, languages="en,zh,sw",
                            shots=budget["shots"], seeds=budget["seeds"], max_items=budget["max_items"]))
    config.eval.alignment.update(dict(sources=("flores", "tatoeba"), languages=("zh", "sw"),
                                      poolers=("avg-6", "last-6"), max_pairs=budget["pairs"]))
    return config
