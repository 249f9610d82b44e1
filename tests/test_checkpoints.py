import jax
import numpy as np
import pytest

from helpers import to_np
from rest_jax.runtime import checkpoints as ckpt_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.training import state as state_lib
from rest_jax.training import step as training
from rest_jax.models import PRESETS, init_params

CFG = PRESETS["tiny"].replace(num_layers=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  mesh = mesh_lib.create_mesh((2, 2, 2))
  graphdef, params = init_params(CFG, mesh, seed=3)
  opt = training.make_optimizer()
  state = state_lib.create_state(mesh, params, opt)
  # Non-trivial optimizer moments and step.
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, params, opt),
                                  mesh)
  batch = {k: np.ones((8, 8), np.int32) for k in training.BATCH_KEYS}
  batch["decoder_loss_weights"] = np.ones((8, 8), np.float32)
  state, _ = step(state, batch)
  directory = tmp_path_factory.mktemp("ckpt")
  with ckpt_lib.CheckpointManager(directory, prefix="iter", max_to_keep=2) as mgr:
    for i in (1, 2, 3):
      mgr.save_state(i, state, meta={"iteration": i})
    mgr.wait()
  return directory, params, opt, state


def test_round_trip_onto_a_different_mesh(saved):
  directory, params, opt, state = saved
  other = mesh_lib.create_mesh((1, 8, 1))
  with ckpt_lib.CheckpointManager(directory, prefix="iter") as mgr:
    restored = mgr.restore_state(3, state_lib.abstract_state(other, params, opt))
    assert mgr.meta(3) == {"iteration": 3}
  assert int(restored.step) == int(state.step) == 1
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(to_np(a), to_np(b))
    assert a.sharding.mesh.shape == other.shape
  emb = restored.params["embed"][...]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_max_to_keep_and_names(saved):
  directory = saved[0]
  assert sorted(p.name for p in directory.iterdir() if p.name.startswith("iter_")) == [
      "iter_002", "iter_003"]
  with ckpt_lib.CheckpointManager(directory, prefix="iter") as mgr:
    assert mgr.steps() == [2, 3] and mgr.latest_step() == 3


def test_restore_params_only(saved):
  directory, params, opt, state = saved
  mesh = mesh_lib.create_mesh((2, 2, 2))
  abstract = state_lib.abstract_state(mesh, params, opt).params
  with ckpt_lib.CheckpointManager(directory, prefix="iter") as mgr:
    restored = mgr.restore_params(2, abstract)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(to_np(a), to_np(b))


def test_restore_target_without_sharding_is_refused(saved):
  directory, params, _, _ = saved
  bare = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  with ckpt_lib.CheckpointManager(directory, prefix="iter") as mgr:
    with pytest.raises(TypeError, match="with a sharding"):
      mgr.restore_params(3, bare)
