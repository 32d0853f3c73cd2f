"""Entry point: ``python -m xalign_jax.main --config configs/<name>.py[:variant] --workdir DIR [--mode MODE]``.

Modes:
  * ``train``  (default): AFP training; resumes from ``DIR/checkpoints`` when present; ``summary.json`` at the end.
    With ``eval.before_training`` / ``eval.after_training`` it also writes the before/after comparison.
  * ``eval``: evaluate the model the config points at, or the latest checkpoint in DIR, into ``DIR/eval/``.
  * ``export``: write the latest checkpoint as an HF directory ``DIR/export`` that transformers loads (training's
    after-evaluation reports the best checkpoint, which is the latest unless a better one was kept).
Any config key can be overridden: ``--config.train.steps=100``.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from xalign_jax.config_defaults import REPO_ROOT

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(REPO_ROOT / "configs" / "gemma3.py"), "Config file (path[:variant]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.", required=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")

log = logging.getLogger("xalign_jax")


def _setup_logging(workdir: pathlib.Path, is_main: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(workdir / "train.log"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str]) -> None:
    del argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never reach for a hub at run time
    from xalign_jax import distributed
    distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax

    workdir = pathlib.Path(_WORKDIR.value).absolute()
    _setup_logging(workdir, jax.process_index() == 0)
    config = _CONFIG.value
    from xalign_jax import config_validation
    try:
        config_validation.validate(config, mode=_MODE.value)
    except config_validation.ConfigError as error:
        sys.exit(str(error))
    log.info("%s on %d device(s) (%s), %d process(es); workdir %s", _MODE.value, jax.device_count(),
             jax.devices()[0].device_kind, jax.process_count(), workdir)
    if jax.process_count() > 1:
        log.info("this process: %s", distributed.process_info())
    from xalign_jax import compile_cache, runner
    cache_dir = compile_cache.enable(config.compilation_cache)
    result = runner.RUNNERS[_MODE.value](config, workdir)
    if cache_dir:
        log.info("compilation cache %s: %s", cache_dir, ", ".join(f"{n} {k}" for k, n in compile_cache.stats().items()))
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
