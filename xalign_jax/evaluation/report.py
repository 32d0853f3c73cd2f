"""Evaluation outputs: the results dict, its Markdown table, alignment JSON, projection plots, predictions JSONL.

Top-level numeric entries of the results dict are the reference's metric keys and ``avg_zero``/``avg_all`` (the
trainer logs every top-level number); everything else sits under ``details``, ``gap_to_en`` and ``run``.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np


def metric_key(detail: dict) -> str:
    return f"{detail['task']}_{detail['language']}_s{detail['shots']}_i{detail['seed']}"


def _gaps(details: Sequence[dict], scoring: str) -> dict[str, float]:
    """English accuracy minus each language's, per (task, shots, seed) where English was evaluated."""
    english = {(d["task"], d["shots"], d["seed"]): d["accuracy"][scoring] for d in details if d["language"] == "en"}
    return {metric_key(d): english[(d["task"], d["shots"], d["seed"])] - d["accuracy"][scoring]
            for d in details if d["language"] != "en" and (d["task"], d["shots"], d["seed"]) in english}


def summarise(details: list[dict], scoring: str, **run: Any) -> dict[str, Any]:
    accuracy = {metric_key(d): d["accuracy"][scoring] for d in details}
    zero = [v for d, v in zip(details, accuracy.values()) if d["shots"] == 0]
    return {**accuracy,
            "avg_zero": float(np.mean(zero)) if zero else float("nan"),
            "avg_all": float(np.mean(list(accuracy.values()))) if accuracy else float("nan"),
            "gap_to_en": _gaps(details, scoring),
            "details": details,
            "run": {"scoring": scoring, **run}}


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (task, language), one column per (shots, seed), accuracy in percent, plus the averages."""
    details = results.get("details", [])
    columns = sorted({(d["shots"], d["seed"]) for d in details})
    scoring = results.get("run", {}).get("scoring", "reference")
    rows: dict[tuple[str, str], dict] = {}
    for d in details:
        rows.setdefault((d["task"], d["language"]), {})[(d["shots"], d["seed"])] = d
    head = "| task | lang | template | items | " + " | ".join(f"{k}-shot (seed {s})" for k, s in columns) + " |"
    lines = [f"Scoring: `{scoring}`.", "", head, "|" + "---|" * (4 + len(columns))]
    for (task, lang), cells in rows.items():
        first = next(iter(cells.values()))
        values = [f"{100 * cells[c]['accuracy'][scoring]:.2f}" if c in cells else "" for c in columns]
        lines.append(f"| {task} | {lang} | {first['template']} | {first['items']} | " + " | ".join(values) + " |")
    lines += ["", f"avg_zero = {100 * results['avg_zero']:.2f}, avg_all = {100 * results['avg_all']:.2f}"]
    return "\n".join(lines) + "\n"


def plot_projections(panels: dict[str, dict[str, list]], path: pathlib.Path, title: str = "") -> None:
    """One scatter panel per entry (e.g. "before"/"after"), points coloured by language; Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (name, by_language) in zip(axes[0], panels.items()):
        for language, points in by_language.items():
            xy = np.asarray(points)
            axis.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, label=language)
        axis.set_title(name)
        axis.legend(markerscale=3, fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def file_stem(key: str) -> str:
    return key.replace("/", "_")


def write_eval_outputs(results: dict[str, Any], align: dict[str, Any], out_dir: str | pathlib.Path) -> None:
    """results.json, results.md, alignment.json, predictions.jsonl (when kept) and one PCA plot per projection."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    details = [{k: v for k, v in d.items() if k != "predictions"} for d in results.get("details", [])]
    (out / "results.json").write_text(json.dumps({**results, "details": details}, indent=2, ensure_ascii=False))
    (out / "results.md").write_text(markdown_table(results))
    (out / "alignment.json").write_text(json.dumps(align, indent=1, ensure_ascii=False))
    kept = [(metric_key(d), p) for d in results.get("details", []) for p in d.get("predictions", [])]
    if kept:
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
            for key, prediction in kept:
                handle.write(json.dumps({"key": key, **prediction}, ensure_ascii=False) + "\n")
    for key, by_language in align.get("projection", {}).items():
        plot_projections({key: by_language}, out / f"pca_{file_stem(key)}.png")
