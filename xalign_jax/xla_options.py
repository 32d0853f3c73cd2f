"""XLA compiler options for the CPU programs (train step, scorer), and a check that this XLA knows them.

XLA's debug options are renamed and removed between versions. A run should not stop on one: an option set this XLA
rejects is dropped, with a warning, and the programs compile with XLA's defaults.
"""
from __future__ import annotations

import functools
import logging
import re
import types
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# YNNPACK for reductions only, matmuls by XLA's own library, for every fp32 CPU program (train step, scorer,
# alignment embeddings). It runs the vocabulary-major products of the CE head (objectives.py) and of the scorer's
# vocabulary calls faster on CPU. YNNPACK's products run the scorer's forward passes faster (the whole fp32 scorer
# 6-7% on an AVX2 CPU with jax 0.10.2), but with jax 0.12.0.1 there they put a real model's fp32 logits up to
# 1.9e-3 off transformers', these 2.0e-4, with or without YNNPACK's fusions: precision first (BENCHMARKS.md).
CPU_MATMULS_BY_XLA = types.MappingProxyType({"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"})
# oneDNN's matmul custom call for the dots its rewriter takes (``train.cpu_onednn_matmuls``). Measured on a 2-core
# AMD EPYC (BENCHMARKS.md): with jax 0.12.0.1 the fp32 train step 3-6% faster (the hidden gradient's product
# 170 -> 217 GFLOP/s); jax 0.10.2 knows the options but its rewriter takes no dot, and the step ran 3-6% slower,
# so they are only added where a probe sees the custom call (``onednn_probe``). jax 0.12.0.1 cannot serialize an
# executable that holds the call (std::bad_alloc), so with a persistent compilation cache on they are left out.
CPU_ONEDNN_MATMULS = types.MappingProxyType({"xla_cpu_use_onednn": True,
                                             "xla_cpu_experimental_onednn_custom_call": True})
ONEDNN_MATMUL_TARGET = "__onednn$matmul"
REJECTED_OPTION = re.compile(r"No such compile option|While setting option")


def usable(options: Mapping[str, object] | None, platform: str) -> dict[str, object] | None:
    """``options`` if ``platform`` is "cpu" and this XLA accepts them, else None (XLA's defaults); a rejected set
    is logged, once per process."""
    if platform != "cpu" or not options or not _accepted(_key(options)):
        return None
    return dict(options)


def for_compute_dtype(options: Mapping[str, object] | None, platform: str, dtype: str | jnp.dtype,
                      onednn_matmuls: bool = False) -> dict[str, object] | None:
    """The options a program computing in ``dtype`` compiles with on ``platform``: in fp32 ``usable(options)``,
    plus oneDNN's matmuls where they take dots if ``onednn_matmuls`` (``with_onednn_matmuls``); in bf16 XLA's
    defaults (None), under which YNNPACK multiplies bf16 operands into fp32 results at about twice XLA:CPU's fp32
    rate (``layers.product_fp32_out``), where ``CPU_MATMULS_BY_XLA`` would rewrite every bf16 product in fp32."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return None
    options = usable(options, platform)
    return with_onednn_matmuls(options, platform) if onednn_matmuls else options


def jit_with(function: Callable, options: Mapping[str, object] | None,
             static_argnames: tuple[str, ...] = ()) -> Callable:
    """``function`` jitted to compile with ``options`` (None or empty: XLA's defaults). The same jitted function
    for the same function and options, so that its jit cache outlives the caller (a Scorer is built per
    evaluation)."""
    return _jitted(function, _key(options), static_argnames)


@functools.lru_cache(maxsize=None)
def _jitted(function: Callable, options: tuple[tuple[str, object], ...],
            static_argnames: tuple[str, ...]) -> Callable:
    return jax.jit(function, static_argnames=static_argnames, compiler_options=dict(options) or None)


def _key(options: Mapping[str, object] | None) -> tuple[tuple[str, object], ...]:
    return tuple(sorted((options or {}).items()))


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple[tuple[str, object], ...]) -> bool:
    """Whether this XLA accepts ``options``. That does not depend on the program, so a one-op program tells, once
    per option set (a Scorer is built for every evaluation)."""
    try:
        jax.jit(jnp.negative).lower(jnp.zeros((), jnp.float32)).compile(dict(options))
    except jax.errors.JaxRuntimeError as error:
        if not REJECTED_OPTION.search(str(error)):
            raise
        log.warning("compiler options %s rejected (%s): compiling with XLA's defaults", dict(options), error)
        return False
    return True


def with_onednn_matmuls(options: Mapping[str, object] | None, platform: str) -> Mapping[str, object] | None:
    """``options`` plus ``CPU_ONEDNN_MATMULS`` on a CPU whose XLA's oneDNN rewriter takes a dot (a probe, once per
    process and option set), else ``options`` unchanged. Also unchanged, with a warning, when a persistent
    compilation cache is on and this jax cannot serialize an executable holding the custom call: jax 0.12.0.1 then
    failed every cache write of the train step (std::bad_alloc), and every run compiled it again. A kept program
    is worth more than the 3-6% (a resumed run, the next evaluation); ``compilation_cache.dir=''`` keeps oneDNN."""
    if platform != "cpu":
        return options
    takes_dots, serialize_error = onednn_probe(_key(options))
    if not takes_dots:
        return options
    if serialize_error and compilation_cache_on():
        log.warning("oneDNN's matmuls left out: this jax cannot keep a program that holds them in the compilation "
                    "cache (%s); set compilation_cache.dir='' to trade the cache for them", serialize_error)
        return options
    return {**(options or {}), **CPU_ONEDNN_MATMULS}


def compilation_cache_on() -> bool:
    """Whether jax writes compiled programs to a persistent cache (``compile_cache.enable`` or jax's own flags)."""
    return bool(jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir)


@functools.lru_cache(maxsize=None)
def onednn_probe(options: tuple[tuple[str, object], ...]) -> tuple[bool, str | None]:
    """(takes dots, serialization error): whether an fp32 [256, 256] x [256, 256] product compiled with ``options``
    + ``CPU_ONEDNN_MATMULS`` becomes oneDNN's matmul custom call (jax 0.10.2 accepts the options, but its rewriter
    takes no dot), and if it does, why its executable cannot be serialized (None if it can)."""
    merged = {**dict(options), **CPU_ONEDNN_MATMULS}
    if not _accepted(_key(merged)):
        return False, None
    operand = jnp.zeros((256, 256), jnp.float32)   # the rewriter leaves products of 128 and below to XLA
    compiled = jax.jit(jnp.matmul).lower(operand, operand).compile(merged)
    if ONEDNN_MATMUL_TARGET not in compiled.as_text():
        return False, None
    return True, serialization_error(compiled)


def serialization_error(compiled: jax.stages.Compiled) -> str | None:
    """Why jax cannot serialize ``compiled``, as the persistent compilation cache must to keep it (None if it can)."""
    from jax.experimental import serialize_executable

    try:
        serialize_executable.serialize(compiled)
    except Exception as error:      # jax 0.12.0.1: MemoryError (std::bad_alloc) from the executable's serializer
        return f"{type(error).__name__}: {error}"
    return None
