"""Before/after AFP comparison: a Markdown + JSON table of every shared metric and a pair of PCA plots."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from xalign_jax.evaluation.report import file_stem, plot_projections


def _task_numbers(results: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float))}


def _alignment_numbers(align: dict[str, Any]) -> dict[str, float]:
    return {f"{key}/{space}/{name}": value
            for key, spaces in align.get("metrics", {}).items()
            for space, numbers in spaces.items() for name, value in numbers.items() if name != "pairs"}


ZERO_SHOT_KEY = re.compile(r"^(?P<task>[a-z]+)_(?P<lang>[a-z]+)_s0_i\d+$")
RETRIEVAL_KEY = re.compile(r"^(?P<pair>[^/]+/(?P<lang>[^/]+)/[^/]+)/raw/retrieval_(?:x2en|en2x)$")
# The goal the real experiment reports against (issue text): points, on the 0-100 scale
GOALS = {"retrieval": 20.0, "non_english": 1.0, "english": -0.5}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def headline(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per-language mean zero-shot accuracy (tasks present before and after), gaps to English, mean raw retrieval
    top-1 of both directions per (source, language, pooler), and the goal checks, all in points (0-100)."""
    by_language: dict[str, list[str]] = {}
    for key in table:
        match = ZERO_SHOT_KEY.match(key)
        if match:
            by_language.setdefault(match["lang"], []).append(key)
    languages = {lang: {side: 100 * _mean([table[k][side] for k in keys]) for side in ("before", "after")}
                 for lang, keys in by_language.items()}
    english = languages.get("en")
    for lang, row in languages.items():
        row["delta"] = row["after"] - row["before"]
        if english and lang != "en":    # over the tasks this language shares with English
            pairs = [(k, k.replace(f"_{lang}_", "_en_", 1)) for k in by_language[lang]]
            pairs = [(k, e) for k, e in pairs if e in table]
            for side in ("before", "after"):
                row[f"gap_to_en_{side}"] = 100 * _mean([table[k][side] - table[e][side] for k, e in pairs])
    others = [row for lang, row in languages.items() if lang != "en"]
    non_english = {side: _mean([row[side] for row in others]) for side in ("before", "after", "delta")}
    retrieval: dict[str, dict[str, float]] = {}
    for key, value in table.items():
        match = RETRIEVAL_KEY.match(key)
        if match:
            retrieval.setdefault(match["pair"], {"before": [], "after": []})
            for side in ("before", "after"):
                retrieval[match["pair"]][side].append(100 * value[side])
    retrieval = {pair: {side: _mean(v[side]) for side in ("before", "after")} for pair, v in retrieval.items()}
    for row in retrieval.values():
        row["delta"] = row["after"] - row["before"]
    goals = {"retrieval_up_20_points": all(r["delta"] >= GOALS["retrieval"] for r in retrieval.values())
             if retrieval else None,
             "non_english_zero_shot_up_1_point": non_english["delta"] >= GOALS["non_english"] if others else None,
             "english_not_down_more_than_0.5": english["delta"] >= GOALS["english"] if english else None}
    return {"languages": languages, "non_english": non_english, "retrieval": retrieval, "goals": goals}


def headline_markdown(summary: dict[str, Any]) -> list[str]:
    """The headline as Markdown tables (points, 0-100)."""
    lines = ["Zero-shot accuracy, mean over the tasks each language has (points):", "",
             "| language | before | after | delta | gap to en before* | gap to en after* |", "|---|---|---|---|---|---|"]
    for lang, row in summary["languages"].items():
        gaps = [f"{row[k]:+.1f}" if k in row else "" for k in ("gap_to_en_before", "gap_to_en_after")]
        lines.append(f"| {lang} | {row['before']:.1f} | {row['after']:.1f} | {row['delta']:+.1f} | {' | '.join(gaps)} |")
    ne = summary["non_english"]
    lines.append(f"| non-English mean | {ne['before']:.1f} | {ne['after']:.1f} | {ne['delta']:+.1f} | | |")
    lines += ["", "*accuracy minus English accuracy, over the tasks the language shares with English"]
    lines += ["", "Retrieval top-1, mean of both directions, raw cosine (points):", "",
              "| source/language/pooler | before | after | delta |", "|---|---|---|---|"]
    lines += [f"| {pair} | {r['before']:.1f} | {r['after']:.1f} | {r['delta']:+.1f} |"
              for pair, r in summary["retrieval"].items()]
    lines += ["", "Goals: " + ", ".join(f"{name}: {'met' if ok else 'not met' if ok is not None else 'n/a'}"
                                        for name, ok in summary["goals"].items()), ""]
    return lines


def write_before_after(before: dict[str, Any], after: dict[str, Any], path: str | pathlib.Path) -> dict[str, Any]:
    """``before``/``after`` are ``{"tasks": evaluate_tasks(...), "alignment": evaluate_alignment(...)}``.

    Writes ``path`` (Markdown: the headline, then every metric), ``path`` with ``.json`` and
    ``pca_before_after_<key>.png`` beside it; returns {metric: {"before", "after", "delta"}, "headline": ...}.
    """
    path = pathlib.Path(path)
    numbers = [{**_task_numbers(side.get("tasks", {})), **_alignment_numbers(side.get("alignment", {}))}
               for side in (before, after)]
    shared = [k for k in numbers[1] if k in numbers[0]]
    table = {k: {"before": numbers[0][k], "after": numbers[1][k], "delta": numbers[1][k] - numbers[0][k]}
             for k in shared}
    summary = headline(table)
    lines = headline_markdown(summary) + ["Every metric:", "", "| metric | before | after | delta |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['before']:.4f} | {v['after']:.4f} | {v['delta']:+.4f} |" for k, v in table.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({**table, "headline": summary}, indent=2))
    projections = [side.get("alignment", {}).get("projection", {}) for side in (before, after)]
    for key in projections[1]:
        if key in projections[0]:
            plot_projections({"before": projections[0][key], "after": projections[1][key]},
                             path.parent / f"pca_before_after_{file_stem(key)}.png", title=key)
    return {**table, "headline": summary}
