"""Times the main job's alignment evaluation (configs/gemma3.py 270m) on the real Gemma-3-270M; prints JSON."""
import importlib.util, json, resource, sys, time
from xalign_jax import model_source
from xalign_jax.evaluation import alignment, runner
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
config = m.get_config("270m")
model, tokenizer = model_source.load_model_and_tokenizer(config.model, mesh=None)
calls, embed = [], alignment.embed_sentences
alignment.embed_sentences = lambda *a, **k: calls.append(len(a[2])) or embed(*a, **k)
started = time.perf_counter()
result = runner.evaluate_alignment(model, tokenizer, config.eval.alignment)
seconds = time.perf_counter() - started
print(json.dumps({"label": sys.argv[1], "seconds": round(seconds, 2), "embed_calls": calls,
                  "metrics": result["metrics"], "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
