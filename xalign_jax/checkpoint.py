"""Orbax checkpoints behind one small class, so an Orbax API switch stays local to this file.

A checkpoint holds three items committed atomically together (Orbax writes to a temporary directory and renames):
  * ``state``: the train-state pytree (params, optimizer state, step, RNG key), restored into any sharding,
  * ``data``: the input iterator's JSON position, so a resumed run sees exactly the batches it would have seen,
  * ``meta``: the config and the metrics of that step (for humans and for best-checkpoint selection).

Retention keeps the latest ``keep`` checkpoints plus the ``keep_best`` best by a dev metric (higher is better;
until a dev metric exists the caller passes the negated training loss).
"""
from __future__ import annotations

import logging
import math
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger(__name__)

BEST_METRIC = "selection_score"


class Checkpointer:
    """Async, keep-N + keep-best checkpoints of (train state, data position, metadata) under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, keep_best: int = 1,
                 async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=keep_best,
                           keep_checkpoints_without_metrics=False),
        ])
        # best_fn is what best_step() ranks by; without it Orbax answers the latest step whatever the policy kept.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC], best_mode="max",
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the highest selection score; None when no kept step has one."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict, *, selection_score: float | None,
             force: bool = False) -> bool:
        """Start an async save of ``step``; returns whether a save was started. A score that is not finite (a
        diverged loss, a dev run without zero-shot tasks) is not ranked: NaN would sort as the best and the
        retention policy would delete the real best checkpoint."""
        if selection_score is not None and not math.isfinite(selection_score):
            log.warning("checkpoint: step %d's selection score %s is not finite: kept as latest, never as best",
                        step, selection_score)
            selection_score = None
        metrics = None if selection_score is None else {BEST_METRIC: float(selection_score)}
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                    meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s (async)", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restore ``step`` into the shardings carried by ``abstract_state`` (ShapeDtypeStructs).

        Because the target shardings come from the caller, a checkpoint written on one mesh restores onto another.
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                    meta=ocp.args.JsonRestore()))
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return restored["state"], restored["data"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Block until pending async writes are committed (call before reading them or exiting)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``: the restore target for the same layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
