"""Declared sharding: a device mesh from config, logical axis names for every parameter, one rules table.

Parameters (and the optimizer state that mirrors them) are named by `logical_axes`, from the
module and leaf names of their path; `RULES` maps logical names onto mesh axes. A dimension
whose size the mesh axes do not divide stays replicated, so every model runs on every mesh.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aero_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes ("" replicates). The batch is split over data and fsdp; weights
# are split over fsdp along the model width and over tensor along heads / FFN width / vocabulary.
RULES = {
    "batch": "data,fsdp",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": "",  # per-layer scalars and [L, H] EReg parameters: small, replicated
    "positions": "",
}

# (module, leaf) -> logical axes; "*" matches any module. Looked up most specific first.
_PARAMETER_AXES = {
    ("wte", "embedding"): ("vocab", "embed"),
    ("*", "wpe"): ("positions", "embed"),
    ("query", "kernel"): ("embed", "heads"), ("key", "kernel"): ("embed", "heads"),
    ("value", "kernel"): ("embed", "heads"), ("out", "kernel"): ("heads", "embed"),
    ("fc_in", "kernel"): ("embed", "mlp"), ("fc_out", "kernel"): ("mlp", "embed"),
    ("fused", "kernel"): ("embed", "mlp"),
    ("query", "*"): ("heads",), ("key", "*"): ("heads",), ("value", "*"): ("heads",),
    ("out", "*"): ("embed",), ("fc_in", "*"): ("mlp",), ("fc_out", "*"): ("embed",), ("fused", "*"): ("mlp",),
    ("attn", "log_temperature"): ("heads", "positions"),
    ("attn", "temperature"): ("heads", "positions"),
    ("qk", "kernel"): ("embed", "heads"), ("qk", "*"): ("heads",),
    ("*", "entropy_thresholds"): ("layers", "layers"),
    ("*", "entropy_strength_logits"): ("layers", "layers"),
}


def make_mesh(axis_sizes: Mapping[str, int], devices: Optional[Sequence] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the devices left over."""
    devices = list(jax.devices() if devices is None else devices)
    unknown = sorted(set(axis_sizes) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"mesh axis {', '.join(unknown)} is invalid; accepted: {', '.join(MESH_AXES)}")
    sizes = {axis: int(axis_sizes.get(axis, 1)) for axis in MESH_AXES}
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f"mesh={sizes} is invalid; accepted: positive sizes, at most one of them -1")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        sizes[fill[0]] = len(devices) // known if len(devices) % known == 0 else -1
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(f"mesh={sizes} does not match the {len(devices)} devices; accepted: sizes whose "
                          f"product is {len(devices)}")
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)


def check_rules(rules: Mapping[str, str]) -> None:
    """Every rule names known mesh axes (comma-separated, "" to replicate)."""
    for logical, axes in rules.items():
        bad = [a for a in str(axes).split(",") if a and a not in MESH_AXES]
        if bad:
            raise ConfigError(f"sharding_rules.{logical}={axes!r} names unknown mesh axis {', '.join(bad)}; "
                              f"accepted: comma-separated names from {', '.join(MESH_AXES)}, or '' to replicate")


def logical_axes(path: Tuple, ndim: int) -> Tuple[Optional[str], ...]:
    """Logical axis names of a parameter (or its optimizer moment) from its tree path."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if ndim == 0 or not names:
        return (None,) * ndim
    leaf, module = names[-1], names[-2] if len(names) > 1 else ""
    for key in ((module, leaf), ("*", leaf), (module, "*")):
        axes = _PARAMETER_AXES.get(key)
        if axes is not None and len(axes) == ndim:
            return axes
    if leaf in ("scale", "bias") and ndim == 1:  # LayerNorm gains and biases
        return ("embed",)
    return (None,) * ndim


def partition_spec(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                   rules: Mapping[str, str] = RULES) -> PartitionSpec:
    """The mesh axes of each dimension; dimensions the mesh axes do not divide stay replicated."""
    spec, used = [], set()
    for name, size in zip(axes, shape):
        mesh_axes = tuple(a for a in (rules.get(name, "") if name else "").split(",") if a and a not in used)
        width = math.prod(mesh.shape[a] for a in mesh_axes) if mesh_axes else 1
        if not mesh_axes or width == 1 or size % width:
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes if len(mesh_axes) > 1 else mesh_axes[0])
    return PartitionSpec(*spec)


def tree_shardings(tree, mesh: Mesh, rules: Mapping[str, str] = RULES):
    """NamedShardings for every leaf of a (shape) tree: parameters, optimizer state, model state."""
    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, partition_spec(logical_axes(path, len(shape)), shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, rules: Mapping[str, str] = RULES) -> NamedSharding:
    """Rows of a [B, T] batch over the batch axes (data, fsdp by default), positions replicated."""
    batch_axes = tuple(a for a in rules.get("batch", "").split(",") if a)
    return NamedSharding(mesh, PartitionSpec(batch_axes or None, None))


def activation_sharding(mesh: Mesh, rules: Mapping[str, str] = RULES) -> NamedSharding:
    """[B, T, D] activations: rows over the batch axes like the batch, features whole (weights are gathered)."""
    return NamedSharding(mesh, PartitionSpec(*batch_sharding(mesh, rules).spec, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_local_batch(rows_local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch array from this process's rows (its contiguous slice of the batch)."""
    return jax.make_array_from_process_local_data(sharding, rows_local)


def put_global_batch(rows_global: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch array from rows every process holds in full (e.g. validation rows)."""
    per_process = rows_global.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    return put_local_batch(rows_global[start:start + per_process], sharding)


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str, rules: Mapping[str, str] = RULES) -> None:
    shards = math.prod(mesh.shape[a] for a in rules.get("batch", "").split(",") if a)
    if batch_size % shards:
        raise ConfigError(f"{name}={batch_size} is invalid for a mesh with {shards} batch shards; accepted: "
                          f"a multiple of {shards}")
