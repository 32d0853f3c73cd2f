"""The device mesh and the logical-axis rules that place every parameter and batch on it.

Mesh axes are ``('data', 'fsdp', 'tensor')``. The batch is split over ``data`` and ``fsdp`` together; parameters
are sharded over ``fsdp`` on their ``embed`` dimension (ZeRO-3 style: gathered per layer inside the step, which is
the right trade for models up to ~7B) and over ``tensor`` on heads / MLP / vocabulary (Megatron style, for when one
layer's matmuls are worth splitting). A dimension that does not divide its mesh axis is replicated instead, with a
debug log, so odd vocabularies (250,880 over 3 devices) never crash.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
    "seq": None,
}


def make_mesh(data: int, fsdp: int, tensor: int, devices: list | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types (plain jit propagates shardings through matmuls)."""
    devices = devices if devices is not None else jax.devices()
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {data * fsdp * tensor} devices, "
                         f"there are {len(devices)}")
    return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh,
                 rules: Mapping[str, Any] = RULES) -> PartitionSpec:
    """The PartitionSpec for a value with these logical axes; non-divisible dimensions are replicated."""
    spec, used = [], set()
    for name, size in zip(axes, shape):
        target = rules.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        ways = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if ways > 1 and size % ways:
            log.debug("logical axis %s of size %d does not divide %s=%d: replicated", name, size, mesh_axes, ways)
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes or ways == 1 else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
    return PartitionSpec(*spec)


def param_shardings(specs: Mapping[str, Any], mesh: Mesh, rules: Mapping[str, Any] = RULES) -> dict[str, NamedSharding]:
    """``{name: NamedSharding}`` for parameter specs carrying ``.shape`` and ``.axes``."""
    return {name: NamedSharding(mesh, logical_spec(spec.axes, spec.shape, mesh, rules)) for name, spec in specs.items()}


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ``data`` x ``fsdp``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


@functools.lru_cache(maxsize=None)
def local_batch_shards(mesh: Mesh) -> tuple[int, ...]:
    """The batch shards (indices over ``data`` x ``fsdp``) that this process's devices hold, in increasing order;
    once per mesh (``pipeline.to_global`` asks every step).

    With the ``tensor`` axis inside hosts each process holds its own shards; where a shard's devices span hosts,
    those processes list the same shard, and the input pipeline gives them the same rows."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    index_map = batch_sharding(mesh).addressable_devices_indices_map((shards,))
    return tuple(sorted({index[0].start or 0 for index in index_map.values()}))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
