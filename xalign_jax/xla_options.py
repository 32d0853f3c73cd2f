"""XLA compiler options for the CPU programs (train step, scorer), and a check that this XLA knows them.

XLA's debug options are renamed and removed between versions. A run should not stop on one: an option set this XLA
rejects is dropped, with a warning, and the programs compile with XLA's defaults.
"""
from __future__ import annotations

import functools
import logging
import re
import types
from typing import Mapping

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# YNNPACK for reductions only, matmuls by XLA's own library: it runs the vocabulary-major products of the CE head
# (objectives.py) and of the scorer's vocabulary calls (evaluation/scorer.py) faster on CPU (BENCHMARKS.md).
CPU_MATMULS_BY_XLA = types.MappingProxyType({"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"})
REJECTED_OPTION = re.compile(r"No such compile option|While setting option")


def usable(options: Mapping[str, str] | None, platform: str) -> dict[str, str] | None:
    """``options`` if ``platform`` is "cpu" and this XLA accepts them, else None (XLA's defaults); a rejected set
    is logged, once per process."""
    if platform != "cpu" or not options or not _accepted(tuple(sorted(options.items()))):
        return None
    return dict(options)


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
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
