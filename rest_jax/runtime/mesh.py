"""The device mesh and the logical-axis rules: the only module that names mesh axes.

Parameters and activations carry logical axis names in t5x's vocabulary (`batch`, `embed`,
`heads`, ...). `LOGICAL_AXIS_RULES` maps each onto mesh axes; a user changes parallelism by
changing the mesh shape in gin, never the model code.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (a tuple shards one dimension over several axes).
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "cache_length": None,
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": None,
}

Logical = Sequence[str | None]


@gin.configurable
def create_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor'); one `-1` in `shape` takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)}: at most one -1 is allowed")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}")
  # mesh_utils orders devices so that inner axes ride the fastest interconnect.
  try:
    from jax.experimental import mesh_utils
    array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    array = np.asarray(devices).reshape(shape)
  return Mesh(array, MESH_AXES)


def logical_to_spec(names: Logical | None, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
  """PartitionSpec for logical axis names.

  With `shape` and `mesh`, a mesh axis that does not divide its dimension (9 heads on 2
  tensor devices, one KV head) is dropped, so that dimension is replicated instead of failing.
  A mesh axis is used at most once per spec.
  """
  if names is None:
    return PartitionSpec()
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    if name is not None and name not in LOGICAL_AXIS_RULES:
      raise KeyError(f"unknown logical axis {name!r}; known: {sorted(LOGICAL_AXIS_RULES)}")
    axes = LOGICAL_AXIS_RULES.get(name) if name else None
    kept = []
    for axis in axes or ():
      if axis in used:
        continue
      if shape is not None and mesh is not None:
        size = mesh.shape[axis]
        if shape[i] % (size * math.prod(mesh.shape[a] for a in kept)):
          continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def logical_sharding(mesh: Mesh, names: Logical | None, shape: Sequence[int] | None = None):
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def tree_shardings(mesh: Mesh, logical_tree, abstract_tree):
  """NamedShardings for a pytree of arrays given a matching pytree of logical names."""
  return jax.tree.map(
      lambda names, x: logical_sharding(mesh, names, x.shape),
      logical_tree, abstract_tree,
      is_leaf=lambda n: n is None or (isinstance(n, tuple) and all(
          a is None or isinstance(a, str) for a in n)))


def constrain(x: jax.Array, names: Logical) -> jax.Array:
  """Constrains an activation to its logical sharding under the current mesh (no-op without)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(names, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a [batch, ...] array: batch over data and fsdp, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def batch_shards(mesh: Mesh) -> int:
  """How many pieces the `batch` dimension is split into (the data-parallel size)."""
  return math.prod(mesh.shape[a] for a in LOGICAL_AXIS_RULES["batch"])


def tensor_parallel_size(mesh: Mesh) -> int:
  """How many pieces the `heads` / `mlp` dimensions are split into."""
  return math.prod(mesh.shape[a] for a in LOGICAL_AXIS_RULES["heads"])


def across_slices(mesh: Mesh, num_slices: int, devices: Sequence[Any]) -> Mesh:
  """`mesh` laid out again with data parallelism across `num_slices` slices (multi-slice), when
  its data axis is not already set; devices come ordered slice by slice."""
  if num_slices <= 1 or mesh.shape["data"] != 1:
    return mesh
  return create_mesh((num_slices, -1, mesh.shape["tensor"]), devices)


def local_mesh(global_mesh: Mesh, devices: Sequence[Any]) -> Mesh:
  """A mesh over `devices` (one host's) shaped like `global_mesh` where it fits: its tensor
  parallelism is kept when the devices divide by it, the rest goes to fsdp."""
  tensor = global_mesh.shape.get("tensor", 1)
  if len(devices) % tensor:
    tensor = 1
  return create_mesh((1, len(devices) // tensor, tensor), devices)


def host_replicas(local_meshes: Sequence[Mesh]) -> Mesh:
  """One mesh over every host's `local_mesh`, host i's devices at data index i: arrays laid out
  on it by the logical rules hold one whole copy per host (parameters never shard over data),
  each sharded over that host's devices exactly as on its local mesh."""
  shapes = {tuple(m.devices.shape) for m in local_meshes}
  if len(shapes) != 1 or next(iter(shapes))[0] != 1:
    raise ValueError(f"host meshes must share one shape with data=1, got {sorted(shapes)}")
  return Mesh(np.concatenate([m.devices for m in local_meshes], axis=0), MESH_AXES)


def serving_tensor_parallel(num_devices: int, num_heads: int, num_kv_heads: int) -> int:
  """Tensor parallelism of the serving layout on `num_devices`: the largest divisor of the
  device count that divides the KV heads (and so the query heads). The KV cache is then split
  over heads, never copied; a model with fewer KV heads than chips (gemma3-1b has one) keeps a
  whole copy of its weights per tensor group, and its rows split over the rest."""
  return max(t for t in range(1, num_devices + 1)
             if num_devices % t == 0 and num_kv_heads % t == 0 and num_heads % t == 0)


def serving_mesh(mesh: Mesh, tensor: int) -> Mesh:
  """`mesh`'s devices, in the same order, shaped for decoding: ('data', 'fsdp', 'tensor') =
  (rest, 1, `tensor`). With the logical rules, weights shard over heads, MLP and vocabulary and
  replicate over `data`; rows (slots, prompts) split over `data`. A decode step then moves
  activations between chips, never weights. The same device order keeps one device assignment,
  so a jitted program reshards between the two layouts on the devices."""
  n = mesh.devices.size
  if tensor < 1 or n % tensor:
    raise ValueError(f"serving tensor parallelism {tensor} does not divide {n} devices")
  if tuple(mesh.devices.shape) == (n // tensor, 1, tensor):
    return mesh
  return Mesh(mesh.devices.reshape(n // tensor, 1, tensor), MESH_AXES)


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{n}={s}" for n, s in mesh.shape.items())


