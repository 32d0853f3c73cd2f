"""What the trainer and ``main.py`` call: few-shot accuracy over a task grid, and representation alignment.

``evaluate_tasks`` runs every (task, language, shots, seed) of the config with ONE scorer (one compiled function per
bucket length for the whole grid), returning accuracies under the reference's metric keys
``{task}_{lang}_s{shots}_i{seed}`` plus ``avg_zero`` / ``avg_all`` (AFP_SPEC §3.1). Zero-shot runs once whatever
the number of seeds (the reference's duplicate zero-shot run, §7.12, is not reproduced). ``split="dev"`` evaluates
the dev parts (model selection), ``"test"`` the test parts (final numbers).
"""
from __future__ import annotations

import functools
import logging
import pathlib
import time
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from xalign_jax import xla_options
from xalign_jax.evaluation import alignment as align_lib
from xalign_jax.evaluation import fewshot, tasks, templates, tfds_source
from xalign_jax.evaluation.report import summarise
from xalign_jax.evaluation.scorer import DEFAULT_BUCKETS, Scorer, compile_count, encode_prompts

log = logging.getLogger(__name__)

SCORING_MODES = ("reference", "completion", "completion_per_token", "completion_per_char")
SPLITS = {"test": "test", "dev": "dev"}


def default_eval_config() -> ml_collections.ConfigDict:
    """Defaults = the reference's shipped setting extended to the five tasks (en + zh, English prompts)."""
    return ml_collections.ConfigDict({
        "before_training": False, "after_training": False,
        "tasks": ("xnli", "pawsx", "xcopa", "xstorycloze", "xwinograd"),
        "languages": "en,zh",          # comma list, or "all" = every language whose files exist, per task
        "shots": (0, 5),
        "seeds": (0,),
        "scoring": "reference",        # one of SCORING_MODES; every mode is computed and reported in "details"
        "score_positions": "all",      # "continuation": completion modes only, logits at continuation tokens only
        "reference_scores": "relative",  # relative: the reference rule's sums leave out the terms all of an item's
                                         # candidates share (same predictions, 1.2-3.6x fewer vocabulary positions);
                                         # absolute: whole-string log-likelihoods, as the reference logs them
        "prompt_language": "en",       # "en": English template + demos for every language (reference); "same"
        "per_item_demos": False,       # True: a separate demo sample per item (seeded by seed and item key)
        "templates": {"xnli": "xglm", "pawsx": "f3", "xcopa": "reference", "xstorycloze": "reference",
                      "xwinograd": "reference"},
        "max_items": 0,                # per (task, language) on the test split; 0 = all
        "final_split": "test",         # before/after-training evaluation split; "dev" for hyper-parameter sweeps
        "dev_max_items": 200,          # per (task, language) on the dev split (in-training selection)
        "data_dir": "",                # "" = <repo>/../shared/data
        "tfds_data_dir": "",           # set: read items from TFDS array_record datasets (tfds_source) there
        "batch_rows": 8,
        "buckets": DEFAULT_BUCKETS,
        "head_positions": 256,         # positions per vocabulary call ([256, V] fp32 logits on accelerators)
        "cpu_compiler_options": dict(xla_options.CPU_MATMULS_BY_XLA),   # an fp32 model's programs' XLA options
                                       # on CPU (scorer, alignment; a bf16 model's compile with XLA's defaults)
        "cpu_vocab_block": 16384,      # on CPU, vocabulary rows per block of a vocabulary call (running log-sum-exp)
        "predictions": False,          # keep per-item candidate scores (written as predictions.jsonl)
        "alignment": {
            "enabled": True, "sources": ("flores",), "languages": ("zh",), "poolers": ("last-1", "avg-1"),
            "max_pairs": 200, "split": "test", "data_dir": "", "plot": True, "batch_rows": 16,
        },
    })


def _requested(wanted: str) -> list[str]:
    return [lang.strip() for lang in wanted.split(",") if lang.strip()]


def _languages(task: str, wanted: str, data_dir: pathlib.Path) -> list[str]:
    """The requested languages ``task`` has files for; each one it lacks is logged, not skipped silently."""
    present = tasks.available_languages(task, data_dir)
    if wanted == "all":
        return present
    chosen = _requested(wanted)
    missing = [lang for lang in chosen if lang not in present]
    if missing:
        log.info("eval: %s has no %s (it has %s)", task, ",".join(missing), ",".join(present))
    return [lang for lang in chosen if lang in present]


def _grid_tasks(cfg, split: str, data_dir: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(task, languages) to evaluate on ``split``: tasks without a dev part are left out of dev evaluation, and a
    requested language that no task has is an error (a typo would otherwise evaluate nothing)."""
    grid = []
    for task in cfg.tasks:
        if split == "dev" and "dev" not in tasks.parts(task):
            log.warning("eval dev: %s left out (it has no dev part; only test rows)", task)
            continue
        grid.append((task, _languages(task, cfg.languages, data_dir)))
    if cfg.languages != "all":
        found = {lang for _, languages in grid for lang in languages}
        unknown = [lang for lang in _requested(cfg.languages) if lang not in found]
        if unknown:
            raise ValueError(f"config eval.languages: {','.join(unknown)} is in none of the tasks "
                             f"{','.join(task for task, _ in grid)} under {data_dir}")
    return grid


def _load(cfg, task: str, language: str, part: str, data_dir: pathlib.Path) -> list[tasks.Item]:
    if cfg.tfds_data_dir:
        return tfds_source.load_part(task, language, part, cfg.tfds_data_dir)
    return tasks.load_part(task, language, part, data_dir)


def _grid(cfg: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    """(shots, seed) pairs: zero-shot once, k-shot once per seed."""
    return sorted({(k, 0 if k == 0 else s) for k in cfg.shots for s in cfg.seeds})


def _prompt_language(cfg, language: str) -> str:
    return language if cfg.prompt_language == "same" else cfg.prompt_language


def _run_one(scorer: Scorer, tokenizer, cfg, task: str, language: str, items, pool, shots: int, seed: int,
             params) -> dict[str, Any]:
    """Accuracy of every scoring mode on ``items`` (and per-item candidate scores when configured)."""
    prompt_language = _prompt_language(cfg, language)
    template = templates.get_template(task, prompt_language, cfg.templates.get(task, ""))
    connector = fewshot.connector_text(template, tokenizer.eos_token)
    shared = None if cfg.per_item_demos else fewshot.select_demos(pool, shots, seed)
    prompts, owners = [], []
    for index, item in enumerate(items):
        demos = shared if shared is not None and not any(map(item.must_not_see, shared)) else \
            fewshot.select_demos(pool, shots, seed, evaluated=item, per_item=cfg.per_item_demos)
        for prompt in fewshot.build_prompts(template, item, fewshot.render_demos(template, demos, connector)):
            prompts.append(prompt)
            owners.append(index)
    rows = encode_prompts(tokenizer, prompts, eos_before_empty_context=scorer.continuation_only)
    scores = scorer.score(rows, params=params, groups=owners)
    by_mode = {"reference": scores.reference, "completion": scores.completion,
               "completion_per_token": scores.completion / np.maximum(scores.num_tokens, 1),
               "completion_per_char": scores.completion / np.maximum(scores.num_chars, 1)}
    owners = np.asarray(owners)
    gold = np.array([item.label for item in items])
    detail = {"task": task, "language": language, "shots": shots, "seed": seed, "items": len(items),
              "rows": len(prompts), "template": f"{template.task}/{template.name}/{template.language}",
              "prompt_language": prompt_language, "connector": connector, "accuracy": {},
              "reference_scores": cfg.reference_scores}
    predictions = {}
    if cfg.score_positions == "continuation":     # no reference-rule scores are computed (all NaN)
        by_mode.pop("reference")
    _check_finite(by_mode, items, owners, detail)
    for mode, values in by_mode.items():
        predictions[mode] = np.array([int(np.argmax(values[owners == i])) for i in range(len(items))])
        detail["accuracy"][mode] = float(np.mean(predictions[mode] == gold))
    if cfg.predictions:
        detail["predictions"] = [
            {"source": item.source, "gold": item.label, "prediction": int(predictions[cfg.scoring][i]),
             "scores": {mode: values[owners == i].round(6).tolist() for mode, values in by_mode.items()}}
            for i, item in enumerate(items)]
    return detail


def _check_finite(by_mode: dict[str, np.ndarray], items, owners: np.ndarray, detail: dict) -> None:
    """A NaN or infinite score would make an argmax meaningless: name where it happened."""
    for mode, values in by_mode.items():
        bad = sorted({int(owners[row]) for row in np.flatnonzero(~np.isfinite(values))})
        if bad:
            sources = ", ".join(items[i].source for i in bad[:3])
            raise ValueError(f"eval {detail['task']} {detail['language']} {detail['shots']}-shot: {mode} scores are "
                             f"not finite for {len(bad)} item(s), first {sources}")


def evaluate_tasks(model: Any, tokenizer: Any, eval_cfg: ml_collections.ConfigDict, *, split: str = "test",
                   params=None, mesh=None, progress: bool = True) -> dict[str, Any]:
    """Accuracy per (task, language, shots, seed) on ``split`` ("test" or "dev"), with avg_zero / avg_all."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")
    if eval_cfg.scoring not in SCORING_MODES:
        raise ValueError(f"scoring {eval_cfg.scoring!r}: expected one of {SCORING_MODES}")
    if eval_cfg.score_positions == "continuation" and eval_cfg.scoring == "reference":
        raise ValueError("config eval.score_positions='continuation' computes no reference-rule score: "
                         "set eval.scoring to a completion mode, or score_positions='all'")
    data_dir = pathlib.Path(eval_cfg.data_dir or tasks.default_data_dir())
    limit = eval_cfg.max_items if split == "test" else eval_cfg.dev_max_items
    scorer = Scorer(model, batch_rows=eval_cfg.batch_rows, buckets=eval_cfg.buckets, mesh=mesh,
                    head_positions=eval_cfg.head_positions, pad_id=tokenizer.pad_token_id or 0,
                    positions=eval_cfg.score_positions, reference_scores=eval_cfg.reference_scores,
                    cpu_compiler_options=eval_cfg.cpu_compiler_options.to_dict(),
                    cpu_vocab_block=eval_cfg.cpu_vocab_block)
    compiles_before, started, details = compile_count(), time.perf_counter(), []
    for task, languages in _grid_tasks(eval_cfg, split, data_dir):
        for language in languages:
            items = _load(eval_cfg, task, language, SPLITS[split], data_dir)
            items = items[:limit] if limit else items
            pool = _load(eval_cfg, task, _prompt_language(eval_cfg, language), "demo", data_dir)
            for shots, seed in _grid(eval_cfg):
                detail = _run_one(scorer, tokenizer, eval_cfg, task, language, items, pool, shots, seed, params)
                details.append(detail)
                if progress:
                    log.info("eval %s %s %s s%d i%d: %d items, %d rows, acc %.4f (%s)", split, task, language,
                             shots, seed, detail["items"], detail["rows"], detail["accuracy"][eval_cfg.scoring],
                             eval_cfg.scoring)
    return summarise(details, eval_cfg.scoring, split=split, compiles=compile_count() - compiles_before,
                     seconds=time.perf_counter() - started)


def evaluate_alignment(model: Any, tokenizer: Any, align_cfg: ml_collections.ConfigDict, *, params=None,
                       cpu_compiler_options: Mapping[str, object] | None = xla_options.CPU_MATMULS_BY_XLA
                       ) -> dict[str, Any]:
    """Retrieval / cosine metrics per (source, language, pooler), plus 2-D projections for the plot; an fp32
    model's programs compile on CPU with ``cpu_compiler_options`` (the scorer's, ``eval.cpu_compiler_options``)."""
    if not align_cfg.enabled:
        return {}
    data_dir = pathlib.Path(align_cfg.data_dir or tasks.default_data_dir())
    out: dict[str, Any] = {"metrics": {}, "projection": {}}
    embed = _embedder(model, tokenizer, tuple(align_cfg.poolers), params, align_cfg.batch_rows, cpu_compiler_options)
    for pooler in align_cfg.poolers:
        for source in align_cfg.sources:
            english_vectors = {}
            for language in align_cfg.languages:
                xx, en = align_lib.load_pairs(source, language, data_dir, split=align_cfg.split,
                                              limit=align_cfg.max_pairs)
                vectors = embed(tuple(xx))[pooler], embed(tuple(en))[pooler]
                out["metrics"][f"{source}/{language}/{pooler}"] = align_lib.alignment_metrics(*vectors)
                english_vectors.setdefault("en", vectors[1])
                english_vectors[language] = vectors[0]
            out["projection"][f"{source}/{pooler}"] = align_lib.project_2d(english_vectors)
    return out


def _embedder(model: Any, tokenizer: Any, poolers: tuple[str, ...], params, batch_rows: int,
              cpu_compiler_options: Mapping[str, object] | None
              ) -> Callable[[tuple[str, ...]], dict[str, np.ndarray]]:
    """``embed_sentences_by_pooler`` for every pooler, each distinct list of sentences run once: FLORES pairs every
    language with the same English sentences, which the forward passes would otherwise embed again for each
    language (the same batches, so the same vectors), and poolers of one layer share its passes."""
    @functools.cache
    def embed(sentences: tuple[str, ...]) -> dict[str, np.ndarray]:
        return align_lib.embed_sentences_by_pooler(model, tokenizer, sentences, poolers, params=params,
                                                   batch_rows=batch_rows, cpu_compiler_options=cpu_compiler_options)
    return embed
