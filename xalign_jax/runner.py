"""What each ``--mode`` of ``xalign_jax.main`` does, as plain functions of (config, workdir) -> result dict."""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Callable

import jax

log = logging.getLogger(__name__)


def _evaluate(model, tokenizer, config: Any, out_dir: pathlib.Path, *, params=None, split: str = "test") -> dict:
    """Few-shot tasks + representation alignment of ``model`` (or ``params`` in its graph) into ``out_dir``."""
    from xalign_jax.evaluation import report
    from xalign_jax.evaluation import runner as eval_runner
    results = eval_runner.evaluate_tasks(model, tokenizer, config.eval, split=split, params=params)
    alignment = eval_runner.evaluate_alignment(model, tokenizer, config.eval.alignment, params=params,
                                               cpu_compiler_options=config.eval.cpu_compiler_options.to_dict())
    if jax.process_index() == 0:
        report.write_eval_outputs(results, alignment, out_dir)
    return {"tasks": results, "alignment": alignment}


def run_train(config: Any, workdir: pathlib.Path) -> dict:
    """AFP training, with the optional before/after evaluation of the same model (test splits, or the dev splits
    when ``eval.final_split`` says so: hyper-parameter sweeps must never look at test)."""
    from xalign_jax.train import Trainer
    trainer = Trainer(config, workdir, evaluator=_dev_evaluator(config))
    before = None
    if config.eval.before_training and trainer.step == 0:
        before = _evaluate(trainer.model, trainer.tokenizer, config, workdir / "eval_before",
                           split=config.eval.final_split)
    summary = trainer.run()
    try:
        _after_training(trainer, config, workdir, before, summary)
    finally:
        trainer.close()
    return summary


def _after_training(trainer, config: Any, workdir: pathlib.Path, before: dict | None, summary: dict) -> None:
    if config.eval.after_training and not summary["preempted"]:
        best = trainer.best_params()
        after = _evaluate(trainer.model, trainer.tokenizer, config, workdir / "eval_after", params=best,
                          split=config.eval.final_split)
        if before is None and (workdir / "eval_before" / "results.json").exists():
            before = _load_eval(workdir / "eval_before")
        if before is not None and jax.process_index() == 0:
            from xalign_jax.evaluation import compare
            summary["comparison"] = compare.write_before_after(before, after, workdir / "before_after.md")
            log.info("before vs after (%s splits; every metric in %s):\n%s", config.eval.final_split,
                     workdir / "before_after.md", "\n".join(compare.headline_markdown(summary["comparison"]["headline"])))


def _dev_evaluator(config: Any) -> Callable | None:
    """The in-training dev-split evaluation used to pick the best checkpoint (never the test split)."""
    if not config.train.eval_every:
        return None
    from xalign_jax.evaluation import runner as eval_runner

    def evaluate_dev(model, tokenizer, params) -> dict:
        return eval_runner.evaluate_tasks(model, tokenizer, config.eval, split="dev", params=params)
    return evaluate_dev


def _load_eval(directory: pathlib.Path) -> dict:
    return {"tasks": json.loads((directory / "results.json").read_text()),
            "alignment": json.loads((directory / "alignment.json").read_text())}


def run_eval(config: Any, workdir: pathlib.Path) -> dict:
    """Evaluate the configured model, or the latest checkpoint in ``workdir`` when there is one."""
    from xalign_jax.train import load_for_inference
    model, tokenizer, step = load_for_inference(config, workdir)
    log.info("evaluating %s", f"checkpoint step {step}" if step is not None else config.model.source)
    result = _evaluate(model, tokenizer, config, workdir / "eval")
    return {"checkpoint_step": step, **result}


def run_export(config: Any, workdir: pathlib.Path) -> dict:
    """Write the latest checkpoint's parameters as an HF directory transformers can load."""
    from xalign_jax import models
    from xalign_jax.train import load_for_inference
    model, tokenizer, step = load_for_inference(config, workdir)
    out = workdir / "export"
    models.save_pretrained(model, out)   # every process takes part in gathering sharded parameters
    if jax.process_index() == 0:
        tokenizer.save_pretrained(out)
    return {"checkpoint_step": step, "export_dir": str(out)}


RUNNERS: dict[str, Callable[[Any, pathlib.Path], dict]] = {
    "train": run_train, "eval": run_eval, "export": run_export}
