"""Keep freed host memory mapped on CPU-only runs, so that XLA:CPU's per-step buffers are not faulted in afresh.

glibc hands every allocation above 32 MB to the kernel (mmap) and back on free (munmap), and XLA:CPU's worker
threads allocate from arenas that do the same. A train step's temporaries are allocated and freed every step, so
every step faulted them in again, page by page: about 210,000 minor faults (820 MB) per step of the bloom bench,
about 0.2 s of its 1.35 s (BENCHMARKS.md). One arena with no mmap and no trimming keeps the freed pages mapped for
the next step, at the cost of a higher resident size. ``mallopt`` only decides the arena of threads that have not
allocated yet, so this must run before JAX creates its CPU client; hosts with an accelerator plugin are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8   # glibc's mallopt parameters (malloc.h)
ACCELERATOR_MODULES = ("jax_plugins", "libtpu")            # where JAX finds GPU/TPU plugins


def runs_on_cpu_only() -> bool:
    """True when JAX can only use the CPU: ``JAX_PLATFORMS=cpu``, or no accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",") == ["cpu"]
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_MODULES)


def keep_freed_memory_mapped() -> bool:
    """One malloc arena, no mmap, no trimming (glibc only); whether it was applied. Call it at process start."""
    if not runs_on_cpu_only():
        return False
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    applied = all(libc.mallopt(param, value) == 1 for param, value in
                  ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
    log.info("host memory: freed memory stays mapped (glibc mallopt %s)", "applied" if applied else "refused")
    return applied
