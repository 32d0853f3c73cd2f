"""A persistent cache of compiled XLA programs: a rerun, a resumed job or an evaluation with shapes seen before
loads its executables instead of compiling them again.

jax keys a cached executable by the program, jaxlib, the backend, XLA flags, compile options and the devices, but
not by the host CPU. XLA:CPU compiles for the instruction set of the host it runs on, so an executable written on
a host with AMX or AVX-512 can crash a host without them that shares the directory. And a CPU job's key does not
say whether its devices belong to one process or several. So each host instruction set and process count gets a
directory of its own.

The cache counts what it served and wrote (``stats``), so a log can say whether a compile was a load.
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import platform
from typing import Any

import jax

from xalign_jax.config_defaults import cache_root

log = logging.getLogger(__name__)

_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_WRITE_EVENT = "/jax/compilation_cache/cache_misses"   # jax records it when it writes an entry
_COUNTS = {_HIT_EVENT: 0, _WRITE_EVENT: 0}


def host_fingerprint(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> str:
    """A short name for this host's architecture and instruction-set extensions (its CPU flags on Linux)."""
    description = platform.machine()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):      # x86 / arm64
                description += " " + " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        description += " " + platform.processor()
    return f"{platform.machine()}-{hashlib.sha256(description.encode()).hexdigest()[:12]}"


def enable(cache_cfg: Any) -> str | None:
    """Points jax's persistent compilation cache at ``cache_cfg.dir`` (``auto``: ``cache_root()/xla``; empty:
    off) under a subdirectory per host instruction set and process count, before anything compiles; returns the
    directory used."""
    base = str(cache_cfg.dir)
    if not base:
        return None
    if base == "auto":
        base = str(cache_root() / "xla")
    directory = f"{base.rstrip('/')}/{host_fingerprint()}-{jax.process_count()}proc"
    if "://" not in directory:      # a local path: fail here, by name, rather than warn at every compile
        try:
            pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(f"config compilation_cache.dir: cannot create {directory} ({error}); give a writable "
                          "directory, or '' to compile without the cache") from error
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(cache_cfg.min_compile_seconds))
    log.info("compiled programs are cached in %s (programs that compile in under %.1fs are not)",
             directory, float(cache_cfg.min_compile_seconds))
    return directory


def _count_event(event: str, **kwargs) -> None:
    if event in _COUNTS:
        _COUNTS[event] += 1


# Registered once, at import: the events come only from a cache that ``enable`` turned on.
jax.monitoring.register_event_listener(_count_event)


def stats() -> dict[str, int]:
    """Executables loaded from and written to the persistent cache by this process so far."""
    return {"loaded": _COUNTS[_HIT_EVENT], "written": _COUNTS[_WRITE_EVENT]}
