"""The train state (params + optimizer state + step), its shardings, and sharded creation."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models import params as params_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def state_shardings(mesh, params, optimizer: optax.GradientTransformation) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameter, the rest replicate."""
  param_sh = params_lib.shardings(mesh, params)
  abstract_opt = jax.eval_shape(optimizer.init, _abstract(params))
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, sh: sh, abstract_opt, param_sh,
      transform_non_params=lambda _: mesh_lib.replicated(mesh),
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return TrainState(step=mesh_lib.replicated(mesh), params=param_sh, opt_state=opt_sh)


def abstract_state(mesh, params, optimizer) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target of a checkpoint on `mesh`."""
  sh = state_shardings(mesh, params, optimizer)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=_abstract(params),
                        opt_state=jax.eval_shape(optimizer.init, _abstract(params)))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, sh)


def create_state(mesh, params, optimizer) -> TrainState:
  """A fresh TrainState around `params`, each array created in its sharding."""
  sh = state_shardings(mesh, params, optimizer)

  def init(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

  with jax.set_mesh(mesh):
    return jax.jit(init, in_shardings=(sh.params,), out_shardings=sh)(params)
