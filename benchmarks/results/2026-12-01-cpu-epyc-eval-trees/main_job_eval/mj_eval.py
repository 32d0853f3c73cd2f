"""The main job's task evaluation alone (configs/gemma3.py's eval, the real Gemma), twice: seconds and accuracies.

    HF_HUB_OFFLINE=1 python mj_eval.py ROOT LABEL      # ROOT: the checkout to time; writes mj_eval_LABEL.json
"""
import json
import sys

root, label = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import transformers  # noqa: E402

import configs.gemma3 as gemma3  # noqa: E402
from xalign_jax import model_source, models  # noqa: E402
from xalign_jax.evaluation import runner  # noqa: E402

config = gemma3.get_config()
MODEL = str(model_source.resolve_path(config.model.source, model_source.default_cache_dir()))
tok = transformers.AutoTokenizer.from_pretrained(MODEL)
model = models.from_pretrained(MODEL, dtype="float32")
cfg = config.eval
out = []
for _ in range(2):
    result = runner.evaluate_tasks(model, tok, cfg, split="test", progress=False)
    out.append({"seconds": result["run"]["seconds"], "compiles": result["run"]["compiles"],
                "accuracy": {f"{d['task']}_{d['language']}": d["accuracy"]["completion"] for d in result["details"]}})
    print(label, out[-1]["seconds"], out[-1]["compiles"], flush=True)
json.dump(out, open(f"mj_eval_{label}.json", "w"), indent=1)
