"""orbax checkpoints of model params and train states.

A checkpoint is a directory of orbax items: `params` (always), `opt_state` and `step` (train
states), and `meta` (JSON). Trees are saved as flat `{"a/b/c": array}` dicts, so the on-disk
format does not depend on Python container types (nnx.State, optax tuples), and restoring onto
any mesh only needs a target of ShapeDtypeStructs carrying the new shardings.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten(tree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any], like):
  """Puts `flat`'s leaves back into the structure of `like`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  keys = ["/".join(_key(k) for k in path) for path, _ in paths]
  missing = [k for k in keys if k not in flat]
  if missing:
    raise KeyError(f"checkpoint lacks {len(missing)} arrays the model needs, e.g. {missing[:3]}")
  return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def _restore_target(abstract) -> dict[str, Any]:
  flat = flatten(abstract)
  for k, v in flat.items():
    if not isinstance(v, jax.ShapeDtypeStruct) or v.sharding is None:
      raise TypeError(f"restore target {k!r} must be a ShapeDtypeStruct with a sharding")
  return flat


class CheckpointManager:
  """Numbered checkpoints under one directory (`{prefix}_{step:03d}` when a prefix is set).

  Saves are asynchronous (`wait()` blocks until the last one is committed); `max_to_keep`
  deletes the oldest. All processes of a multi-host job call every method together.
  """

  def __init__(self, directory, *, prefix: str | None = None, max_to_keep: int | None = None,
               async_save: bool = True):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, step_prefix=prefix,
        step_format_fixed_length=3 if prefix else None,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("params", "opt_state", "step", "meta"))

  def save(self, step: int, *, params, opt_state=None, train_step=None,
           meta: dict | None = None, force: bool = True):
    items = {"params": ocp.args.StandardSave(flatten(params)),
             "meta": ocp.args.JsonSave(dict(meta or {}))}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(flatten(opt_state))
    if train_step is not None:
      items["step"] = ocp.args.JsonSave({"step": int(train_step)})
    self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    log.info("checkpoint %d saving to %s", step, self.directory)

  def save_state(self, step: int, state, meta: dict | None = None):
    self.save(step, params=state.params, opt_state=state.opt_state, train_step=state.step,
              meta=meta)

  def restore_params(self, step: int, abstract_params):
    """Only the params of checkpoint `step`, onto the shardings in `abstract_params`."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_restore_target(abstract_params))))
    return unflatten(out["params"], abstract_params)

  def restore_state(self, step: int, abstract_state):
    """A whole TrainState, onto the shardings of `abstract_state` (any mesh shape)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_restore_target(abstract_state.params)),
        opt_state=ocp.args.StandardRestore(_restore_target(abstract_state.opt_state)),
        step=ocp.args.JsonRestore()))
    step_value = jax.device_put(jnp.asarray(out["step"]["step"], jnp.int32),
                                abstract_state.step.sharding)
    return abstract_state.replace(
        step=step_value,
        params=unflatten(out["params"], abstract_state.params),
        opt_state=unflatten(out["opt_state"], abstract_state.opt_state))

  def meta(self, step: int) -> dict:
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
