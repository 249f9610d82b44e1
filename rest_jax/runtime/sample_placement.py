"""Where the Generate phase runs on several processes, and how the policy gets there.

Training always uses the global mesh. Sampling uses the same parameter arrays, placed one of
two ways (`LoopConfig.sample_placement`):

* `global`: every process runs the sampler's programs together on the global mesh. The
  parameters are used as they are (no copy), so a model larger than one host can be sampled.
  The host schedulers stay in lockstep: they feed the same prompts and act on the same
  (replicated) device outputs, so they make the same decisions.
* `per_host`: each process samples its own prompt shards on its own devices, from a replica
  made on the devices: one jitted reshard of the global arrays onto a mesh that holds a whole
  copy per host, after which each process wraps its own shards as arrays of its local mesh.
  Nothing goes through host memory (the move runs under jax's transfer guards).
  No collectives while sampling, but every host holds the whole model.

`auto` picks `per_host` when a replica fits beside the training state in a device's memory
with room for the KV cache, else `global`. `rest-jax plan` compiles both for a multi-host
slice and reports their memory. One process has one mesh: both placements are the same.
"""

from __future__ import annotations

import logging
from typing import Callable

import jax
import numpy as np

from rest_jax.runtime import distributed as dist
from rest_jax.runtime import mesh as mesh_lib

log = logging.getLogger(__name__)

PLACEMENTS = ("auto", "global", "per_host")
# A per-host replica (plus the global parameter shard already there) may take this much of a
# device's memory; the rest is for the KV cache, the prompt store and temporaries.
REPLICA_MEMORY_FRACTION = 0.5


def check(placement: str) -> str:
  if placement not in PLACEMENTS:
    raise ValueError(f"LoopConfig.sample_placement must be one of {PLACEMENTS}, got "
                     f"{placement!r}")
  return placement


def _device_memory() -> float | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def resolve(placement: str, mesh, params, compute_dtype) -> str:
  """`global` or `per_host` for a run on `mesh` sampling `params` in `compute_dtype`."""
  check(placement)
  if dist.process_count() == 1:
    return "global"     # one process: its devices are the whole mesh
  if placement != "auto":
    return placement
  limit = _device_memory()
  if limit is None:     # host memory (CPU devices): a replica always fits
    return "per_host"
  itemsize = np.dtype(compute_dtype).itemsize
  replica = sum(x.size * (itemsize if np.issubdtype(x.dtype, np.floating) else x.dtype.itemsize)
                for x in jax.tree.leaves(params)) / jax.local_device_count()
  shard = sum(x.nbytes for x in jax.tree.leaves(params)) / mesh.devices.size
  chosen = "per_host" if replica + shard <= REPLICA_MEMORY_FRACTION * limit else "global"
  log.info("sample placement: %s (a per-host replica needs %.2f GiB per device beside %.2f GiB "
           "of training parameters, of %.2f GiB)", chosen, replica / 2**30, shard / 2**30,
           limit / 2**30)
  return chosen


def process_devices(index: int) -> list:
  """The devices of process `index`, in a fixed order (the same on every process)."""
  return sorted((d for d in jax.devices() if d.process_index == index), key=lambda d: d.id)


def sampling_mesh(mesh, placement: str):
  """The mesh the sampler runs on: `mesh` itself, or this process's part of it."""
  if placement == "global" or dist.process_count() == 1:
    return mesh
  return mesh_lib.local_mesh(mesh, process_devices(dist.process_index()))


def to_sampling_mesh(params, mesh, sample_mesh, shardings_fn: Callable):
  """`params` (global arrays on `mesh`) as arrays on `sample_mesh`, device to device.

  Identity when the sampler runs on `mesh`. Otherwise every process must call it together:
  a jitted reshard makes one copy per host, then each process keeps its own shards.
  """
  if sample_mesh is mesh:
    return params
  local = [mesh_lib.local_mesh(mesh, process_devices(i)) for i in range(dist.process_count())]
  replicas = mesh_lib.host_replicas(local)
  target = shardings_fn(sample_mesh, params)
  # No host copy: a value read to the host or put back from it raises here.
  with jax.transfer_guard_device_to_host("disallow_explicit"), \
      jax.transfer_guard_host_to_device("disallow_explicit"):
    moved = jax.jit(lambda p: p, out_shardings=shardings_fn(replicas, params))(params)
    return jax.tree.map(
        lambda x, sh: jax.make_array_from_single_device_arrays(
            x.shape, sh, [s.data for s in x.addressable_shards]), moved, target)
