"""Safetensors reading (bf16 included, no torch) and bounded-memory sharded writing.

``safetensors.numpy`` cannot represent bfloat16, the dtype most HF checkpoints ship in, so the reader parses the
(simple, documented) file format itself: an 8-byte little-endian header length, a JSON header with dtype, shape and
byte offsets, then raw data. Each tensor is read on demand into its own 64-byte aligned anonymous buffer rather
than viewed through ``np.memmap``: a map's pages stay resident (and counted in RSS) for as long as any view of it
lives, and the views outlived loading until the garbage collector freed them, so the load peaked near twice the
parameter bytes. The aligned buffer is one the JAX CPU client adopts without copying it.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
SHARD_BYTES = 2 * 2**30
ALIGNMENT = 64   # what the JAX/XLA CPU client needs to alias a host buffer instead of copying it
READ_CHUNK = 64 * 2**20


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGNMENT`` boundary.

    ``np.empty`` of a large array gets glibc's mmap'd chunk, 16 bytes past a page: placing that on a JAX CPU device
    copies it, briefly doubling the host memory of the biggest parameter (the embedding)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """Whether JAX's CPU client can take ``array`` without copying it (C-contiguous, ``ALIGNMENT``-aligned)."""
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0


class SafetensorsFile:
    """Header of one ``.safetensors`` file and on-demand reading of its tensors."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path}: corrupt safetensors header ({err})") from None
        header.pop("__metadata__", None)
        self.entries = header
        self.data_start = 8 + length

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` copied into a fresh aligned buffer that owns its memory (no map of the file survives)."""
        entry = self.entries[name]
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name}: unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        out = aligned_empty(tuple(entry["shape"]), DTYPES[entry["dtype"]])
        if end - start != out.nbytes:
            raise ValueError(f"{self.path}: tensor {name}: header gives {end - start} bytes for shape "
                             f"{entry['shape']} {entry['dtype']} ({out.nbytes} bytes)")
        if self.data_start + end > os.path.getsize(self.path):
            raise ValueError(f"{self.path}: tensor {name}: data runs past the end of the file (truncated download?)")
        self._read_into(name, self.data_start + start, out.reshape(-1).view(np.uint8))
        return out

    def _read_into(self, name: str, offset: int, buffer: np.ndarray) -> None:
        """Fill ``buffer`` from ``offset`` in bounded reads (no intermediate bytes object of the whole tensor)."""
        view = memoryview(buffer)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:done + READ_CHUNK])
                if not got:
                    raise ValueError(f"{self.path}: tensor {name}: file ended mid-tensor (truncated while reading?)")
                done += got


def write_file(tensors: dict[str, np.ndarray], path: pathlib.Path, metadata: dict[str, str] | None = None) -> None:
    """Write one safetensors file atomically (temp name, then rename), streaming tensor by tensor."""
    header, offset = {}, 0
    for name, array in tensors.items():
        nbytes = array.size * array.dtype.itemsize
        header[name] = {"dtype": CODES[array.dtype], "shape": list(array.shape), "data_offsets": [offset,
                                                                                                  offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)


def plan_shards(sizes: dict[str, int], limit: int = SHARD_BYTES) -> list[list[str]]:
    """Group tensor names (in order) into shards of at most ``limit`` bytes (a bigger tensor gets its own)."""
    shards, current, used = [], [], 0
    for name, size in sizes.items():
        if current and used + size > limit:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return shards + ([current] if current else [])
