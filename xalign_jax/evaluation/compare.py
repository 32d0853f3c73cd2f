"""Before/after AFP comparison: a Markdown + JSON table of every shared metric and a pair of PCA plots."""
from __future__ import annotations

import json
import pathlib
from typing import Any

from xalign_jax.evaluation.report import file_stem, plot_projections


def _task_numbers(results: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def _alignment_numbers(align: dict[str, Any]) -> dict[str, float]:
    return {f"{key}/{space}/{name}": value
            for key, spaces in align.get("metrics", {}).items()
            for space, numbers in spaces.items() for name, value in numbers.items() if name != "pairs"}


def write_before_after(before: dict[str, Any], after: dict[str, Any], path: str | pathlib.Path) -> dict[str, Any]:
    """``before``/``after`` are ``{"tasks": evaluate_tasks(...), "alignment": evaluate_alignment(...)}``.

    Writes ``path`` (Markdown), ``path`` with ``.json`` and ``pca_before_after_<key>.png`` beside it; returns the
    comparison dict {metric: {"before", "after", "delta"}}.
    """
    path = pathlib.Path(path)
    numbers = [{**_task_numbers(side.get("tasks", {})), **_alignment_numbers(side.get("alignment", {}))}
               for side in (before, after)]
    shared = [k for k in numbers[1] if k in numbers[0]]
    table = {k: {"before": numbers[0][k], "after": numbers[1][k], "delta": numbers[1][k] - numbers[0][k]}
             for k in shared}
    lines = ["| metric | before | after | delta |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['before']:.4f} | {v['after']:.4f} | {v['delta']:+.4f} |" for k, v in table.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(table, indent=2))
    projections = [side.get("alignment", {}).get("projection", {}) for side in (before, after)]
    for key in projections[1]:
        if key in projections[0]:
            plot_projections({"before": projections[0][key], "after": projections[1][key]},
                             path.parent / f"pca_before_after_{file_stem(key)}.png", title=key)
    return table
