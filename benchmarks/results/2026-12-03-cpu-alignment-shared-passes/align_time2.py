"""Times the main job's alignment evaluation (configs/gemma3.py 270m) with the poolers given, on the real
Gemma-3-270M; prints JSON with the seconds and every metric."""
import importlib.util, json, resource, sys, time
from xalign_jax import model_source
from xalign_jax.evaluation import runner
spec = importlib.util.spec_from_file_location("c", "configs/gemma3.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
config = m.get_config("270m")
config.eval.alignment.poolers = tuple(sys.argv[2].split(","))
model, tokenizer = model_source.load_model_and_tokenizer(config.model, mesh=None)
started = time.perf_counter()
result = runner.evaluate_alignment(model, tokenizer, config.eval.alignment)
seconds = time.perf_counter() - started
print(json.dumps({"label": sys.argv[1], "poolers": sys.argv[2], "seconds": round(seconds, 2),
                  "metrics": result["metrics"], "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
