"""From the config's data section to tokenized training examples: build (if needed), validate, tokenize.

With ``data.synthetic_records`` set, random-token examples of realistic shapes stand in for data
(``data/synthetic.py``: throughput benchmarks on machines without corpora or tokenizer). Otherwise, with
``data.train_file`` empty the default recipe (``data/recipes.py``) is built from the shared corpora into
``WORKDIR/data/train.jsonl`` once; process 0 builds and the others wait, so every process reads identical records.
Every record is validated before anything is compiled: a malformed line stops the run with ``file:line: field: ...``
unless ``data.skip_bad_records``, in which case the skips are counted and logged.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
from jax.experimental import multihost_utils

from xalign_jax.data import recipes, synthetic, tokenize
from xalign_jax.data.records import read_records

log = logging.getLogger(__name__)


def _recipe(config: Any) -> dict:
    """The config keys the default recipe's records depend on (stored next to the built file)."""
    return {"data.recipe_languages": list(config.data.recipe_languages),
            "data.recipe_records": int(config.data.recipe_records), "train.seed": int(config.train.seed)}


def _build_or_check_recipe(config: Any, path: pathlib.Path) -> None:
    """Build the default recipe into ``path`` once; a file built before from other recipe keys is an error, not
    silently trained on (a workdir's records are what its checkpoints' data positions point into)."""
    wanted, sidecar = _recipe(config), path.with_suffix(".recipe.json")
    if path.exists():
        built = json.loads(sidecar.read_text()) if sidecar.exists() else None
        if built is None:
            log.warning("%s has no %s: cannot check that it was built from this config's recipe", path, sidecar.name)
        elif built != wanted:
            changed = {k: (built.get(k), v) for k, v in wanted.items() if built.get(k) != v}
            raise ValueError(f"{path} was built from other recipe settings (built, now): {changed}; use a fresh "
                             "--workdir, or delete the file to rebuild it")
        return
    summary = recipes.build_default_training_set(
        config.data.data_dir, path, languages=tuple(config.data.recipe_languages),
        num_records=config.data.recipe_records, seed=config.train.seed)
    sidecar.write_text(json.dumps(wanted) + "\n")
    log.info("built the default training set %s:\n%s", path, summary)


def training_file(config: Any, workdir: pathlib.Path) -> pathlib.Path:
    """The records file to train on, building the default recipe into the workdir when none is configured."""
    if config.data.train_file:
        return pathlib.Path(config.data.train_file)
    path = pathlib.Path(workdir) / "data" / "train.jsonl"
    if jax.process_index() == 0:
        _build_or_check_recipe(config, path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("training set built")
    return path


def load_training_examples(config: Any, tokenizer: Any, workdir: pathlib.Path, *,
                           vocab_size: int) -> tokenize.TokenizedCorpus:
    """Validated, tokenized examples of the training file (counts of anything dropped are in ``.report``), or the
    random-token examples of ``data.synthetic_records`` (benchmarks without data or tokenizer)."""
    if config.data.synthetic_records:
        pad_id = 0 if tokenizer is None else tokenize.special_ids(tokenizer)[2]
        corpus = synthetic.synthetic_corpus(
            int(config.data.synthetic_records), vocab_size=vocab_size, seq_len=int(config.data.seq_len),
            max_sentence_len=int(max(config.data.cl_buckets)), seed=int(config.train.seed), pad_id=pad_id)
        log.warning("training on %d SYNTHETIC random-token examples (a throughput benchmark, not a model): %s",
                    len(corpus), corpus.report)
        return corpus
    path = training_file(config, workdir)
    records, report = read_records(path, skip_bad=config.data.skip_bad_records)
    log.info("records: %s", report)
    corpus = tokenize.tokenize_corpus(records, tokenizer, config.data)
    log.info("tokenized: %s", corpus.report)
    return corpus
