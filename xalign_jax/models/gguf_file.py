"""A GGUF file's header read in well under a second: its metadata and its tensors as memory-mapped views.

``gguf``'s own ``GGUFReader`` builds a numpy view for every element of every metadata array. For Gemma-3's
262,144-token vocabulary (its tokens, scores and token types) that takes ~11 s before any tensor is read, on every
load of the file. This reader walks the same layout (GGUF v2 and v3: magic, version, counts, key/value pairs, tensor
descriptions, aligned data) with one numpy view per numeric array and a plain loop over string lengths. Tensors come
out as ``gguf.GGUFReader`` lays them out: typed arrays for float and integer types, bytes shaped
``[..., bytes per row]`` for quantised ones, so that ``gguf.quants.dequantize`` takes them unchanged.
"""
from __future__ import annotations

import dataclasses
import mmap
import pathlib
import struct
from typing import Any

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# metadata value type -> its little-endian format, which both struct and numpy read
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_TYPED_TENSORS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                  "I32": np.int32, "I64": np.int64}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the file: ``shape`` in GGUF order (fastest-varying dimension first), ``data`` mapped."""
    name: str
    tensor_type: Any           # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


class _Cursor:
    """Sequential little-endian reads from a buffer; running past its end is a ``ValueError`` naming the offset."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer, self.offset = buffer, 0

    def take(self, size: int) -> int:
        """Advance by ``size`` bytes and return where they start."""
        start = self.offset
        if size < 0 or start + size > len(self.buffer):
            raise ValueError(f"the file ends inside a field at byte {start} (needs {size} bytes)")
        self.offset += size
        return start

    def scalar(self, fmt: str) -> Any:
        """One value of struct format ``fmt`` as a Python int, float or bool."""
        return struct.unpack_from(fmt, self.buffer, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        start = self.take(length)
        return self.buffer[start:start + length].decode("utf-8")

    def value(self, kind: int) -> Any:
        """A metadata value as Python data: str, int, float, bool, or a list of them."""
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind} at byte {self.offset - 4}")
        item_kind, count = self.scalar("<I"), self.scalar("<Q")
        if item_kind in _SCALARS:
            dtype = np.dtype(_SCALARS[item_kind])
            return np.frombuffer(self.buffer, dtype, count, self.take(dtype.itemsize * count)).tolist()
        return [self.value(item_kind) for _ in range(count)]


class GGUFFile:
    """The metadata (``metadata``: key -> value, in file order) and tensors (``tensors``, in file order) of a GGUF
    file; the file stays mapped while any tensor view is alive."""

    def __init__(self, path: str | pathlib.Path):
        with open(path, "rb") as handle:
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        cursor = _Cursor(buffer)
        if buffer[cursor.take(4):cursor.offset] != MAGIC:
            raise ValueError("GGUF magic invalid (not a GGUF file)")
        version = cursor.scalar("<I")
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {version} is not supported (supported: {VERSIONS})")
        tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            if key in self.metadata:
                raise ValueError(f"metadata key {key!r} appears twice")
            self.metadata[key] = cursor.value(cursor.scalar("<I"))
        descriptions = [self._description(cursor) for _ in range(tensor_count)]
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-cursor.offset // alignment) * alignment
        self.tensors = [_tensor(buffer, data_start, *description) for description in descriptions]
        names = [tensor.name for tensor in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("a tensor name appears twice")

    @staticmethod
    def _description(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
        name = cursor.string()
        dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
        return name, dims, cursor.scalar("<I"), cursor.scalar("<Q")


def _tensor(buffer: mmap.mmap, data_start: int, name: str, dims: tuple[int, ...], type_id: int,
            offset: int) -> Tensor:
    """A tensor's mapped data, laid out as ``gguf.GGUFReader`` lays it out."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    try:
        kind = GGMLQuantizationType(type_id)
    except ValueError:
        raise ValueError(f"tensor {name!r}: unknown tensor type {type_id}") from None
    block_size, type_size = GGML_QUANT_SIZES[kind]
    elements = int(np.prod(dims, dtype=np.int64))
    num_bytes = elements * type_size // block_size
    start = data_start + offset
    if start + num_bytes > len(buffer):
        raise ValueError(f"tensor {name!r}: its {num_bytes} bytes at byte {start} run past the end of the file "
                         f"({len(buffer)} bytes): truncated?")
    shape = tuple(reversed(dims))
    if kind.name in _TYPED_TENSORS:
        data = np.frombuffer(buffer, _TYPED_TENSORS[kind.name], elements, start).reshape(shape)
    else:
        data = np.frombuffer(buffer, np.uint8, num_bytes, start).reshape(quant_shape_to_byte_shape(shape, kind))
    return Tensor(name, kind, dims, data)
