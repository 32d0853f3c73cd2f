"""The scorer alone on the real Gemma-3-270M: items/s of one ``score`` call per workload, as the evaluator calls it
(relative reference scores, each item's candidates one group). ``DTYPE`` is the model's dtype (weights and
compute). One untimed call (compiles), then the faster of two timed calls; the scores go to ``ab_LABEL.npz``.

    PYTHONPATH=ROOT python ab_scorer.py LABEL ROOT DTYPE ITEMS      # ROOT: the checkout to time (its benchmarks/ too)
"""
import json
import sys
import time

import numpy as np
import transformers

label, root, dtype, items = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path[:0] = [root, root + "/benchmarks"]
from eval_speed import _prompts  # noqa: E402
from xalign_jax import model_source, models  # noqa: E402
from xalign_jax.evaluation import scorer  # noqa: E402

MODEL = model_source.resolve_path("gemma3-270m", model_source.default_cache_dir())
tok = transformers.AutoTokenizer.from_pretrained(MODEL)
ours = scorer.Scorer(models.from_pretrained(MODEL, dtype=dtype, param_dtype=dtype), batch_rows=16,
                     reference_scores="relative")
out, scores = {}, {}
for task, language in (("xcopa", "zh"), ("pawsx", "en"), ("xstorycloze", "en")):
    for shots in (0, 5):
        per_item = _prompts(task, language, shots, items, tok.eos_token)
        rows = scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts])
        groups = np.repeat(np.arange(len(per_item)), [len(prompts) for prompts in per_item])
        ours.score(rows, groups=groups)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            result = ours.score(rows, groups=groups)
            times.append(time.perf_counter() - start)
        key = f"{task}-{language}-{shots}"
        scores[key] = result.reference
        prediction = [int(np.argmax(result.reference[groups == i])) for i in range(len(per_item))]
        out[key] = {"items_per_s": len(per_item) / min(times), "times": times, "pred": prediction}
        print(label, task, language, shots, f"{len(per_item) / min(times):.2f} items/s",
              [round(t, 2) for t in times], flush=True)
json.dump(out, open(f"ab_{label}.json", "w"))
np.savez(f"ab_{label}.npz", **scores)
