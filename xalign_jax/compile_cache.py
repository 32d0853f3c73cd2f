"""A persistent cache of compiled XLA programs: a rerun, a resumed job or an evaluation with shapes seen before
loads its executables instead of compiling them again.

jax keys a cached executable by the program, jaxlib, the backend, XLA flags, compile options and the devices, but
not by the host CPU. XLA:CPU compiles for the instruction set of the host it runs on, so an executable written on
a host with AMX or AVX-512 can crash a host without them that shares the directory. And a CPU job's key does not
say whether its devices belong to one process or several. So each host instruction set and process count gets a
directory of its own.

The cache counts what it served and wrote (``stats``), so a log can say whether a compile was a load.

jax writes an entry in place and never replaces one that exists. A process stopped while writing (a preempted VM,
SIGKILL) leaves a truncated entry that every later run fails to read, warns about and compiles again: the cache
stops serving that program for good. ``enable`` therefore removes entries whose compressed stream is cut short
before anything compiles (``remove_truncated_entries``), so the next run writes them anew.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import platform
import time
import zlib
from typing import Any

import jax

from xalign_jax.config_defaults import cache_root

log = logging.getLogger(__name__)

_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_WRITE_EVENT = "/jax/compilation_cache/cache_misses"   # jax records it when it writes an entry (or one exists)
_COUNTS = {_HIT_EVENT: 0, _WRITE_EVENT: 0}
_ENTRY_SUFFIX = "-cache"                    # jax's name for an entry: "<module>-<key>-cache"
_VERIFIED = "verified-entries.json"         # entries found complete: name -> [size, mtime_ns]
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SETTLE_SECONDS = 60.0                       # an entry younger than this may still be being written by a live run


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
        if jax.process_index() == 0:       # the only process jax lets write entries
            remove_truncated_entries(pathlib.Path(directory))
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(cache_cfg.min_compile_seconds))
    log.info("compiled programs are cached in %s (programs that compile in under %.1fs are not)",
             directory, float(cache_cfg.min_compile_seconds))
    return directory


def remove_truncated_entries(directory: pathlib.Path, settle_seconds: float = SETTLE_SECONDS) -> list[str]:
    """Deletes the entries of ``directory`` whose compressed stream ends early and returns their names.

    Each entry is decompressed once and then remembered by size and modification time in ``verified-entries.json``
    (replaced atomically), so a later run checks only new entries. Entries modified in the last ``settle_seconds``
    are left for the next run: another process may still be writing them."""
    verified = _read_verified(directory / _VERIFIED)
    kept, removed = {}, []
    now = time.time_ns()
    for path in sorted(directory.glob(f"*{_ENTRY_SUFFIX}")):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        signature = [stat.st_size, stat.st_mtime_ns]
        if verified.get(path.name) == signature:
            kept[path.name] = signature
        elif now - stat.st_mtime_ns >= settle_seconds * 1e9:
            complete = _stream_is_complete(path)
            if complete:
                kept[path.name] = signature
            elif complete is False:
                path.unlink(missing_ok=True)
                removed.append(path.name)
    if removed:
        log.warning("removed %d truncated compiled program(s) from %s (a run stopped while writing them; they "
                    "compile again once): %s", len(removed), directory, ", ".join(removed))
    if kept != verified:
        _write_verified(directory / _VERIFIED, kept)
    return removed


def _read_verified(path: pathlib.Path) -> dict:
    try:
        verified = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return verified if isinstance(verified, dict) else {}


def _write_verified(path: pathlib.Path, verified: dict) -> None:
    """Replaces the list atomically (another run may read it meanwhile); the list only saves work, so a run goes on
    without it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(verified))
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        log.warning("could not record the checked compiled programs in %s: %s", path, error)


def _stream_is_complete(path: pathlib.Path) -> bool | None:
    """Whether the zlib or zstd stream in ``path`` runs to its end marker; None when that cannot be told here (zstd
    without a zstd decoder, which jax would lack too, or a file that cannot be read). Decompresses 1 MiB at a time
    and keeps none of the output."""
    try:
        with path.open("rb") as stream:
            decompressor = _decompressor(stream.read(len(_ZSTD_MAGIC)))
            if decompressor is None:
                return None
            stream.seek(0)
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                try:
                    decompressor.decompress(chunk)
                except Exception:   # zlib, zstandard and compression.zstd each raise their own error for a bad stream
                    return False
                if decompressor.eof:
                    return True
    except OSError:                 # removed meanwhile by another run, or unreadable: left to jax
        return None
    return False


def _decompressor(head: bytes):
    """A streaming decoder for the format ``head`` starts (jax compresses with zstd where it can, else zlib)."""
    if not head.startswith(_ZSTD_MAGIC):
        return zlib.decompressobj()
    try:
        from compression import zstd        # Python >= 3.14
        return zstd.ZstdDecompressor()
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdDecompressor().decompressobj()


def _count_event(event: str, **kwargs) -> None:
    if event in _COUNTS:
        _COUNTS[event] += 1


# Registered once, at import: the events come only from a cache that ``enable`` turned on.
jax.monitoring.register_event_listener(_count_event)


def stats() -> dict[str, int]:
    """Executables loaded from and written to the persistent cache by this process so far."""
    return {"loaded": _COUNTS[_HIT_EVENT], "written": _COUNTS[_WRITE_EVENT]}
