"""Per workload: items/s of each side over rounds (median, range), after/before ratio of medians, prediction and
score agreement between the two sides."""
import glob, json, statistics
import numpy as np
rates, preds, scores = {}, {}, {}
for path in sorted(glob.glob("ab_*_fp32_r*.json")):
    side = path.split("ab_")[1].split("_fp32")[0]
    for key, rec in json.load(open(path)).items():
        rates.setdefault((key, side), []).append(rec["items_per_s"])
        preds.setdefault((key, side), rec["pred"])
    npz = np.load(path.replace(".json", ".npz"))
    for key in npz.files:
        scores.setdefault((key, side), npz[key])
print("| workload | before items/s, median [min, max] | after | after / before | same predictions | max abs score diff |")
print("|---|---|---|---|---|---|")
for key in sorted({k for k, _ in rates}):
    b, a = rates[(key, "before")], rates[(key, "after")]
    same = sum(x == y for x, y in zip(preds[(key, "before")], preds[(key, "after")]))
    diff = float(np.max(np.abs(scores[(key, "before")] - scores[(key, "after")])))
    f = lambda r: f"{statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}]"
    print(f"| {key} | {f(b)} | {f(a)} | {statistics.median(a) / statistics.median(b):.3f} | {same}/{len(preds[(key, 'before')])} | {diff:.1e} |")
