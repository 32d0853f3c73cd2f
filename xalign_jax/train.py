"""The AFP trainer: build or restore the sharded state, run the one compiled step, log, evaluate, checkpoint.

Read top to bottom: ``Trainer.__init__`` sets everything up (mesh, model, data, optimizer, state, restore),
``Trainer.run`` is the loop. The step itself lives in ``train_step.py``.

Host-device discipline: the loop never waits on the device except to fetch the scalars of a *previous* log step
(the next step is already queued behind it, so the device does not idle) and at checkpoints; shapes are fixed per
contrastive bucket and every compile is logged.
"""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from xalign_jax import checkpoint as ckpt_lib
from xalign_jax import compile_cache
from xalign_jax import config_validation
from xalign_jax import metrics as metrics_lib
from xalign_jax import sharding, train_step, xla_options
from xalign_jax.data import pipeline
from xalign_jax.model_source import load_model_and_tokenizer
from xalign_jax.training_data import load_training_examples

log = logging.getLogger(__name__)


def make_mesh(config: Any) -> jax.sharding.Mesh:
    return sharding.make_mesh(*config_validation.mesh_shape(config.mesh, jax.device_count()))


def init_train_state(params: Any, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     seed: int) -> train_step.TrainState:
    """Fresh state around ``params``. The optimizer moments get their parameter's sharding explicitly (left to
    propagation, ``zeros_like`` moments come out replicated: a full copy of Adam state on every device)."""
    replicated = sharding.replicated(mesh)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params), param_shardings,
                                          transform_non_params=lambda _: replicated)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    return {"params": params, "opt_state": opt_state,
            "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
            "rng": jax.device_put(jax.random.PRNGKey(seed), replicated)}


def load_for_inference(config: Any, workdir: pathlib.Path):
    """(model, tokenizer, step): the configured model, with the latest checkpoint's parameters when one exists."""
    mesh = make_mesh(config)
    model, tokenizer = load_model_and_tokenizer(config.model, mesh=mesh)
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return model, tokenizer, None
    checkpointer = ckpt_lib.Checkpointer(directory)
    step = checkpointer.latest_step()
    if step is not None:
        graphdef, params = nnx.split(model, nnx.Param)
        tx, _ = train_step.make_optimizer(config.train)
        template = init_train_state(params, tx, mesh, config.train.seed)
        state, _, _ = checkpointer.restore(step, ckpt_lib.abstract_like(template))
        model = nnx.merge(graphdef, state["params"])
    checkpointer.close()
    return model, tokenizer, step


class Preemption:
    """SIGTERM (the TPU/GPU preemption notice) -> stop after a step, with a final checkpoint and a clean exit.

    One process: a Python handler sets the flag. Several: JAX's preemption service (its notifier catches SIGTERM
    in whichever processes get it) agrees on ONE step for all, polled every step. Per-process flags would let
    processes that saw the signal at different steps split between the collective checkpoint save and the next
    step's collectives, and hang. So no Python handler then: it would replace the service's.
    """

    def __init__(self):
        self.requested = False
        self._service = jax.process_count() > 1
        self._previous = None if self._service else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: will checkpoint and exit after the current step")
        self.requested = True

    def check(self, step: int) -> bool:
        """Whether to stop after ``step``; with several processes, true on all of them at the same step."""
        if self._service and not self.requested:
            try:
                self.requested = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError as error:      # jax_enable_preemption_service off: nothing to agree with
                log.warning("no preemption service (%s): SIGTERM will end the job without a checkpoint", error)
                self._service = False
            if self.requested:
                log.warning("preemption notice: every process stops after step %d with a checkpoint", step)
        return self.requested

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class CompiledSteps:
    """AOT-compiles the step once per distinct batch shape and logs every compile (a recompile is never silent),
    with ``compiler_options`` (XLA options this XLA accepts: ``xla_options.usable``)."""

    def __init__(self, step_fn, state_shardings, batch_shardings,
                 compiler_options: Mapping[str, object] | None = None):
        self._jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                               out_shardings=(state_shardings, None), donate_argnums=0)
        self.compiler_options = compiler_options
        self._compiled: dict[tuple, Any] = {}
        self.compile_seconds = 0.0
        self.loaded_from_cache = 0     # of the compiles, how many the persistent cache served (compile_cache.py)

    @property
    def num_compiles(self) -> int:
        return len(self._compiled)

    def __call__(self, state, batch):
        return self.compiled_for(state, batch)(state, batch)

    def compiled_for(self, state, batch):
        """The executable for this batch's shapes, compiled (and logged) the first time they are seen; a caller
        that knows its shapes up front (the benchmark) compiles them all before timing anything."""
        key = self._shape_key(batch)
        if key not in self._compiled:
            start, loaded_before = time.perf_counter(), compile_cache.stats()["loaded"]
            compiled = self._jitted.lower(state, batch).compile(self.compiler_options)
            seconds = time.perf_counter() - start
            self.compile_seconds += seconds
            loaded = compile_cache.stats()["loaded"] > loaded_before
            self.loaded_from_cache += loaded
            log.info("compile #%d of the train step in %.1fs%s for shapes %s; %s", len(self._compiled) + 1, seconds,
                     " (loaded from the compilation cache)" if loaded else "", {k: s for k, s in key},
                     _format_memory(compiled.memory_analysis()))
            self._compiled[key] = compiled
        return self._compiled[key]

    @staticmethod
    def _shape_key(batch) -> tuple:
        return tuple((k, v.shape) for k, v in sorted(batch.items()))

    def is_new_shape(self, batch) -> bool:
        """Whether this batch's shapes will compile."""
        return self._shape_key(batch) not in self._compiled

    def memory_analysis(self):
        return next(iter(self._compiled.values())).memory_analysis() if self._compiled else None


def _format_memory(memory) -> str:
    if memory is None:
        return "memory analysis unavailable"
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return ", ".join(f"{f.replace('_size_in_bytes', '')}={getattr(memory, f, 0) / 2**20:.1f}MiB" for f in fields)


class Trainer:
    """Owns the mesh, the model graph, the sharded train state, the data iterator and the checkpointer."""

    def __init__(self, config: Any, workdir: str | pathlib.Path, evaluator=None):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(config)
        self.evaluator = evaluator
        self._evaluates_dev = evaluator is not None and bool(config.train.eval_every)
        self._dev_score: tuple[int | None, float | None] = (None, None)   # (step, avg_zero) of the last dev eval
        self.model, self.tokenizer = load_model_and_tokenizer(config.model, mesh=self.mesh)
        config_validation.validate_against_model(config, self.model.config.num_layers)
        self.graphdef, params = nnx.split(self.model, nnx.Param)
        self.examples = load_training_examples(config, self.tokenizer, self.workdir,
                                               vocab_size=self.model.config.vocab_size)
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.batches = pipeline.make_batches(self.examples, config.data, config.train, seed=config.train.seed,
                                             batch_shards=batch_shards,
                                             local_shards=sharding.local_batch_shards(self.mesh))
        tx, self.schedule = train_step.make_optimizer(config.train)
        self.state = init_train_state(params, tx, self.mesh, config.train.seed)
        self.state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        step_fn = train_step.make_train_step(self.graphdef, tx, self.schedule, config.objective,
                                             config.train.micro_batches, config.data.supervised_group_rows,
                                             batch_shards)
        platform = self.mesh.devices.flat[0].platform
        options = xla_options.for_compute_dtype(config.train.cpu_compiler_options.to_dict(), platform,
                                                config.model.dtype, config.train.cpu_onednn_matmuls)
        self.step_fn = CompiledSteps(step_fn, self.state_shardings, self.batch_sharding, options)
        self.flops = metrics_lib.ModelFlops.from_config(self.model.config)
        self.peak_flops = metrics_lib.peak_flops_per_device(config.train.peak_tflops) * jax.local_device_count()
        self.checkpointer = ckpt_lib.Checkpointer(self.workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                                  keep_best=config.train.keep_best_checkpoints)
        self._maybe_restore()

    # ----------------------------------------------------------------------------------------------- state
    def _maybe_restore(self) -> None:
        step = self.checkpointer.latest_step()
        if step is None:
            log.info("no checkpoint in %s: starting from step 0", self.checkpointer.directory)
            return
        state, data_state, _ = self.checkpointer.restore(step, ckpt_lib.abstract_like(self.state))
        self.state = state
        self.batches.set_state(data_state)
        log.info("resumed from step %d", step)

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state["step"]))

    def best_params(self):
        """Parameters of the best checkpoint (by dev score, else training loss); the current ones if that is now."""
        best = self.checkpointer.best_step()
        if best is None or best == self.step:
            return self.state["params"]
        state, _, _ = self.checkpointer.restore(best, ckpt_lib.abstract_like(self.state))
        log.info("using the best checkpoint (step %d) for the final evaluation", best)
        return state["params"]

    def close(self) -> None:
        self.checkpointer.close()

    # ----------------------------------------------------------------------------------------------- loop
    def run(self, stop_after: int | None = None) -> dict:
        """Train to ``train.steps`` (or only until step ``stop_after``, a time-boxed run that resumes later)."""
        tcfg = self.config.train
        end_step = tcfg.steps if stop_after is None else min(stop_after, tcfg.steps)
        writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main)
        start_step = self.step
        progress = metrics_lib.Progress(tcfg.steps, start_step)
        preemption = Preemption()
        pending: tuple[int, dict, dict] | None = None
        window = _ThroughputWindow()
        last_scalars: dict = {}
        step = start_step
        wall_start = time.perf_counter()
        self._clock = _LapClock()
        try:
            while step < end_step and not preemption.requested:
                host_batch = next(self.batches)
                batch = pipeline.to_global(host_batch, self.mesh)
                compile_seconds = self.step_fn.compile_seconds
                if self.step_fn.is_new_shape(batch):   # its compile pauses the clock: the queued steps run first
                    jax.block_until_ready(self.state)
                self.state, step_metrics = self.step_fn(self.state, batch)
                step += 1
                preemption.check(step)
                window.add(host_batch, self.flops, self.config.objective)
                self._clock.pause(self.step_fn.compile_seconds - compile_seconds)
                if pending is not None:   # the previous log step has finished by now: fetching it costs no stall
                    last_scalars = self._log(writer, progress, *pending)
                    pending = None
                checkpoint_now = step % tcfg.checkpoint_every == 0 and step < end_step
                if step % tcfg.log_every == 0 or step == end_step or checkpoint_now or preemption.requested:
                    pending = (step, step_metrics, window.take())
                if self._evaluates_dev and step % tcfg.eval_every == 0:
                    self._paused(self._evaluate, writer, step)
                if checkpoint_now:        # the save waits for this step anyway: its own metrics score it
                    last_scalars = self._log(writer, progress, *pending)
                    pending = None
                    self._paused(self._save, step, last_scalars)
            if pending is not None:
                last_scalars = self._log(writer, progress, *pending)
            if step not in self.checkpointer.all_steps():   # a preemption may land right after a periodic save
                self._save(step, last_scalars, force=True)
        finally:
            self.checkpointer.wait()
            preemption.restore()
            writer.close()
        return self._summary(start_step, step, time.perf_counter() - wall_start, last_scalars,
                             preempted=preemption.requested)

    def _paused(self, work, *args) -> None:
        """Run host-side ``work`` (an evaluation, a checkpoint save) with its seconds kept out of throughput. The
        steps queued before it finish first: their device time belongs to the window, and an evaluation waiting
        for them inside the pause made step times too short and MFU too high at every evaluation step."""
        jax.block_until_ready(self.state)
        started = time.perf_counter()
        work(*args)
        self._clock.pause(time.perf_counter() - started)

    def _log(self, writer, progress, step: int, device_metrics: dict, window: dict) -> dict:
        scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if scalars.get("clm_unscored", 0):
            raise RuntimeError(f"step {step}: {scalars['clm_unscored']:.0f} supervised CLM tokens had no LM-head "
                               "slot and were not scored (the pipeline's clm_head_index should list them all)")
        seconds = max(self._clock.lap(), 1e-9)   # the window's device time: compiles, evaluations, saves excluded
        scalars["step_time_s"] = seconds / max(window["steps"], 1)
        scalars["tokens_per_s"] = window["tokens"] / seconds
        scalars["mfu"] = window["flops"] / seconds / self.peak_flops
        scalars["compiles"] = self.step_fn.num_compiles
        writer.write(step, scalars, prefix="train/")
        scalars["step"] = step
        if self.is_main:
            progress.report(step, {
                "loss": f"{scalars['loss']:.4f}", "cl": f"{scalars['cl_loss']:.4f}",
                "clm": f"{scalars['clm_loss']:.4f}", "cl_acc": f"{scalars['cl_accuracy']:.3f}",
                "lr": f"{scalars['lr']:.2e}", "gnorm": f"{scalars['grad_norm']:.3f}",
                "tok/s": f"{scalars['tokens_per_s']:.0f}", "mfu": f"{100 * scalars['mfu']:.2f}%",
                "step_s": f"{scalars['step_time_s']:.3f}"})
        return scalars

    def _evaluate(self, writer, step: int) -> None:
        results = self.evaluator(self.model, self.tokenizer, self.state["params"])
        writer.write(step, {k: v for k, v in results.items() if isinstance(v, (int, float))}, prefix="dev/")
        self._dev_score = (step, results.get("avg_zero"))

    def _selection_score(self, step: int, last_scalars: dict) -> float | None:
        """Higher is better. With dev evaluations, only a dev score of this very step (a checkpoint without one
        is kept as latest but never ranked: dev accuracy and training loss are not one scale); without, the
        negated training loss of this step."""
        if self._evaluates_dev:
            scored_step, score = self._dev_score
            return score if scored_step == step else None
        return -last_scalars["loss"] if last_scalars.get("step") == step else None

    def _save(self, step: int, last_scalars: dict, force: bool = False) -> None:
        score = self._selection_score(step, last_scalars)
        meta = {"config": json.loads(self.config.to_json_best_effort()), "metrics": last_scalars, "step": step}
        self.checkpointer.save(step, self.state, self.batches.get_state(), meta, selection_score=score, force=force)

    def _summary(self, start_step: int, end_step: int, wall: float, last: dict, *, preempted: bool) -> dict:
        """What the run did, written to ``summary.json``; a run that found nothing left to train keeps the summary
        of the run that finished (its losses and throughput are not this run's to blank)."""
        written = self.workdir / "summary.json"
        if end_step == start_step and written.exists():
            log.info("no step left to train: %s of the run that reached step %d is kept", written, end_step)
            return {**json.loads(written.read_text()), "steps_this_run": 0}
        summary = {
            "steps": end_step, "steps_this_run": end_step - start_step, "preempted": preempted,
            "tokens_seen": int(self.batches.tokens_seen), "wall_time_s": wall,
            "clm_examples_carried": self.batches.carried, "clm_examples_held_by_cap": self.batches.held_by_cap,
            "clm_targets_lost_at_row_breaks": self.batches.row_break_targets,
            "final": {k: last.get(k) for k in ("loss", "cl_loss", "clm_loss", "cl_accuracy")},
            "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"),
            "compiles": self.step_fn.num_compiles, "compile_time_s": self.step_fn.compile_seconds,
            "compiles_loaded_from_cache": self.step_fn.loaded_from_cache,
            "best_checkpoint_step": self.checkpointer.best_step(),
            "latest_checkpoint_step": self.checkpointer.latest_step(),
            "data_report": self.examples.report if hasattr(self.examples, "report") else None,
        }
        if self.is_main:
            written.write_text(json.dumps(summary, indent=2, default=str))
        return summary


class _ThroughputWindow:
    """Host-side token and FLOP counts of the steps between two log steps (no device reads)."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self.steps, self.tokens, self.flops = 0, 0, 0.0

    def add(self, host_batch: dict, flops: metrics_lib.ModelFlops, ocfg: Any) -> None:
        clm_tokens = int(np.asarray(host_batch["clm_segment_ids"] > 0).sum())
        cl_tokens, _, cl_seq = pipeline.contrastive_tokens(host_batch)
        _, layer = _pool_layer(ocfg)
        self.steps += 1
        self.tokens += clm_tokens + cl_tokens
        self.flops += flops.train_step_flops(
            clm_tokens=clm_tokens, clm_seq=host_batch["clm_ids"].shape[1], cl_tokens=cl_tokens,
            cl_seq=cl_seq, cl_layers=layer,
            head_tokens=int(np.asarray(host_batch["clm_weights"] > 0).sum()))

    def take(self) -> dict:
        out = {"steps": self.steps, "tokens": self.tokens, "flops": self.flops}
        self._reset()
        return out


class _LapClock:
    """Seconds between consecutive metric fetches, less the host work paused within them (compiles, evaluations,
    saves). A log step's metrics arrive when that step has RUN, so laps measure device time; timing dispatches
    instead would measure only the asynchronous enqueue. A pause counts in the lap it happens in."""

    def __init__(self):
        self._last = time.perf_counter()
        self._paused = 0.0

    def pause(self, seconds: float) -> None:
        self._paused += seconds

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last - self._paused, now
        self._paused = 0.0
        return seconds


def _pool_layer(ocfg: Any) -> tuple[str, int]:
    from xalign_jax import objectives
    return objectives.parse_pooler(ocfg.pooler)

