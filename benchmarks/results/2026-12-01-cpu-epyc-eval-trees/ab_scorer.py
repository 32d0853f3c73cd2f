"""The scorer alone on the real Gemma-3-270M: items/s of one ``score`` call per workload, as measured for this
folder. ``MODE`` is ``base`` (a checkout of 9d24d49: one segment per row, whole-string reference scores),
``trees`` (each item's candidates as one prefix tree, whole-string scores) or ``relative`` (trees and the
evaluator's default relative reference scores). One untimed call (compiles), then the faster of two timed calls.

    PYTHONPATH=ROOT python ab_scorer.py MODE ROOT ITEMS      # ROOT: the checkout to time (its benchmarks/ too)
"""
import json
import sys
import time

import numpy as np
import transformers

mode, root, items = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [root, root + "/benchmarks"]
from eval_speed import _prompts  # noqa: E402
from xalign_jax import models  # noqa: E402
from xalign_jax.evaluation import scorer  # noqa: E402

MODEL = "/root/.cache/xalign_jax/models/gemma3-270m"
tok = transformers.AutoTokenizer.from_pretrained(MODEL)
options = {"reference_scores": "relative"} if mode == "relative" else {}
ours = scorer.Scorer(models.from_pretrained(MODEL, dtype="float32"), batch_rows=16, **options)
out = {}
for task, language in (("xcopa", "zh"), ("pawsx", "en"), ("xstorycloze", "en")):
    for shots in (0, 5):
        per_item = _prompts(task, language, shots, items, tok.eos_token)
        rows = scorer.encode_prompts(tok, [p for prompts in per_item for p in prompts])
        groups = np.repeat(np.arange(len(per_item)), [len(prompts) for prompts in per_item])
        grouped = {} if mode == "base" else {"groups": groups}
        ours.score(rows, **grouped)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            result = ours.score(rows, **grouped)
            times.append(time.perf_counter() - start)
        prediction = [int(np.argmax(result.reference[groups == i])) for i in range(len(per_item))]
        out[f"{task}-{language}-{shots}"] = {"items_per_s": len(per_item) / min(times), "times": times,
                                             "pred": prediction}
        print(mode, task, language, shots, f"{len(per_item) / min(times):.2f} items/s",
              [round(t, 2) for t in times], flush=True)
json.dump(out, open(f"ab_{mode}.json", "w"))
