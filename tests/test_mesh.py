import jax
import pytest
from jax.sharding import PartitionSpec as P

from rest_jax.runtime import mesh as mesh_lib


def test_eight_simulated_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("shape,expected", [
    ((2, 2, 2), (2, 2, 2)), ((1, -1, 1), (1, 8, 1)), ((-1, 2, 1), (4, 2, 1)),
    ((1, 1, -1), (1, 1, 8))])
def test_create_mesh_shapes(shape, expected):
  mesh = mesh_lib.create_mesh(shape)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == expected


@pytest.mark.parametrize("shape,msg", [
    ((3, -1, 1), "does not divide"), ((-1, -1, 1), "at most one"), ((2, 2), "3 entries"),
    ((2, 2, 1), "needs 4 devices")])
def test_create_mesh_errors(shape, msg):
  with pytest.raises(ValueError, match=msg):
    mesh_lib.create_mesh(shape)


def test_rules_and_divisibility_fallback():
  mesh = mesh_lib.create_mesh((2, 2, 2))
  # A mesh axis is used once per spec: batch takes fsdp, so embed stays replicated.
  assert mesh_lib.logical_to_spec(("batch", "length", "embed"), (8, 4, 16), mesh) == P(
      ("data", "fsdp"), None, None)
  assert mesh_lib.logical_to_spec(("embed", "mlp"), (16, 32), mesh) == P("fsdp", "tensor")
  # 9 heads or a single KV head do not split over 2 tensor devices: replicated instead.
  assert mesh_lib.logical_to_spec(("embed", "heads", "head_dim"), (16, 9, 64), mesh) == P(
      "fsdp", None, None)
  assert mesh_lib.logical_to_spec(("embed", "kv_heads", "head_dim"), (16, 1, 64), mesh) == P(
      "fsdp", None, None)
  with pytest.raises(KeyError, match="unknown logical axis"):
    mesh_lib.logical_to_spec(("embedding",))


def test_constrain_is_noop_without_mesh_and_shards_with_one():
  import jax.numpy as jnp
  x = jnp.ones((8, 4, 16))
  assert mesh_lib.constrain(x, ("batch", "length", "embed")) is x
  mesh = mesh_lib.create_mesh((2, 2, 2))
  with jax.set_mesh(mesh):
    y = jax.jit(lambda a: mesh_lib.constrain(a * 2, ("batch", "length", "embed")))(x)
  expected = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, None))
  assert y.sharding.is_equivalent_to(expected, 3)
