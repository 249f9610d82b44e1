"""The model's parameters as one pytree: abstract shapes, logical names, sharded creation.

rest_jax passes a model around as `(graphdef, params)` (`nnx.split`): the graphdef is static,
`params` is an `nnx.State` of arrays that the sampler and the train step both take as input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models.config import ModelConfig
from rest_jax.models.transformer import Transformer


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def abstract_params(cfg: ModelConfig, remat: bool = False):
  """(graphdef, params) with ShapeDtypeStructs: no memory, no compute (any model size)."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), remat=remat))
  return nnx.split(model)


def logical_axes(params):
  """A tree like `params` whose leaves are the logical names of each array."""
  def names(path, var):
    axes = tuple(var.get_metadata()["logical_axes"])
    stacked = getattr(path[0], "key", None) == "layers"
    return ("layers",) + axes if stacked else axes

  return jax.tree_util.tree_map_with_path(names, params, is_leaf=_is_var)


def shardings(mesh, params):
  """NamedShardings for `params` (a State of arrays or of ShapeDtypeStructs)."""
  axes = logical_axes(params)
  return jax.tree.map(
      lambda names, var: var.replace(mesh_lib.logical_sharding(mesh, names, var.get_value().shape)),
      axes, params, is_leaf=lambda x: _is_var(x) or isinstance(x, tuple))


def init_params(cfg: ModelConfig, mesh, seed: int = 0, remat: bool = False):
  """(graphdef, params) created directly in their shardings (never whole on one device)."""
  graphdef, abstract = abstract_params(cfg, remat)
  out_shardings = shardings(mesh, abstract)

  @jax.jit
  def init(key):
    return nnx.split(Transformer(cfg, rngs=nnx.Rngs(key), remat=remat))[1]

  with jax.set_mesh(mesh):
    params = jax.jit(init, out_shardings=out_shardings)(jax.random.key(seed))
  return graphdef, params


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def cast(params, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      params)
