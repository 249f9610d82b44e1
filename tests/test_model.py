import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from helpers import family_configs, perturb, to_np
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models import PRESETS, KVCache, abstract_params, init_params, param_count
from rest_jax.models import params as params_lib

FAMILIES = family_configs()
# float32 with highest matmul precision: sharded and unsharded differ only by reduction order.
SHARDED_ATOL = 2e-5


def _specs(params):
  sh = params_lib.shardings(mesh_lib.create_mesh((2, 2, 2)), params)
  flat = jax.tree_util.tree_flatten_with_path(sh)[0]
  return {"/".join(str(k.key) for k in path if hasattr(k, "key")): s.spec for path, s in flat}


def test_tiny_partition_specs_golden():
  _, params = abstract_params(PRESETS["tiny"])
  assert _specs(params) == {
      "embed": P("tensor", "fsdp"),
      "final_norm/scale": P("fsdp"),
      "layers/attn/q": P(None, "fsdp", "tensor", None),
      "layers/attn/k": P(None, "fsdp", "tensor", None),
      "layers/attn/v": P(None, "fsdp", "tensor", None),
      "layers/attn/o": P(None, "tensor", None, "fsdp"),
      "layers/attn_norm/scale": P(None, "fsdp"),
      "layers/mlp/gate": P(None, "fsdp", "tensor"),
      "layers/mlp/up": P(None, "fsdp", "tensor"),
      "layers/mlp/down": P(None, "tensor", "fsdp"),
      "layers/mlp_norm/scale": P(None, "fsdp"),
  }


@pytest.mark.parametrize("preset,expected", [
    ("smollm2-135m", 134_515_008), ("gemma3-270m", 268_098_176), ("gemma3-1b", 999_885_952),
    ("llama3-8b", 8_030_261_248), ("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512),
    # The counts the model cards give: Qwen3 0.6B/1.7B/4B/8B, Llama 3.2 1B/3B.
    ("qwen3-0.6b", 596_049_920), ("qwen3-1.7b", 1_720_574_976), ("qwen3-4b", 4_022_468_096),
    ("qwen3-8b", 8_190_735_360), ("llama3.2-1b", 1_235_814_400),
    ("llama3.2-3b", 3_212_749_824)])
def test_large_presets_instantiate_abstractly(preset, expected):
  _, params = abstract_params(PRESETS[preset])
  assert isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
  assert param_count(params) == expected == PRESETS[preset].num_params()


def _forward(graphdef, params, tokens, **kw):
  return nnx.merge(graphdef, params)(tokens, **kw)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sharded_forward_equals_single_device(family):
  cfg = FAMILIES[family]
  one = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  eight = mesh_lib.create_mesh((2, 2, 2))
  graphdef, p1 = init_params(cfg, one, seed=1)
  p1 = perturb(p1)
  p8 = jax.device_put(p1, params_lib.shardings(eight, p1))
  tokens = jax.random.randint(jax.random.key(2), (4, 12), 0, cfg.vocab_size)
  with jax.set_mesh(one):
    ref, _ = jax.jit(_forward, static_argnums=0)(graphdef, p1, tokens)
  with jax.set_mesh(eight):
    out, _ = jax.jit(_forward, static_argnums=0)(
        graphdef, p8, jax.device_put(tokens, mesh_lib.batch_sharding(eight, 2)))
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(to_np(out), to_np(ref), atol=SHARDED_ATOL, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_decoding_equals_full_forward(family):
  cfg = FAMILIES[family]
  graphdef, params = init_params(cfg, mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  params = perturb(params)
  length = 10  # longer than gemma3's window of 4: local layers must mask old keys.
  tokens = jax.random.randint(jax.random.key(3), (2, length), 0, cfg.vocab_size)
  full, _ = _forward(graphdef, params, tokens)

  step = jax.jit(lambda p, t, pos, c: _forward(graphdef, p, t, positions_BxL=pos, cache=c))
  # Prefill 3 tokens at once, then one token at a time; row 1 starts 2 tokens later.
  cache = KVCache.zeros(cfg, 2, 16)
  logits, cache = step(params, tokens[:, :3], jnp.tile(jnp.arange(3), (2, 1)), cache)
  outs = [logits]
  for i in range(3, length):
    logits, cache = step(params, tokens[:, i:i + 1], jnp.full((2, 1), i), cache)
    outs.append(logits)
  np.testing.assert_allclose(to_np(jnp.concatenate(outs, 1)), to_np(full), atol=1e-5, rtol=1e-6)


def test_cache_rows_are_independent_and_reusable():
  """A row refilled with a new prompt ignores what the previous occupant left in the cache."""
  cfg = FAMILIES["gemma3"]
  graphdef, params = init_params(cfg, mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  params = perturb(params)
  step = jax.jit(lambda p, t, pos, c: _forward(graphdef, p, t, positions_BxL=pos, cache=c))
  old = jax.random.randint(jax.random.key(4), (1, 8), 0, cfg.vocab_size)
  new = jax.random.randint(jax.random.key(5), (1, 5), 0, cfg.vocab_size)
  cache = KVCache.zeros(cfg, 1, 8)
  _, cache = step(params, old, jnp.arange(8)[None], cache)  # fills every slot
  _, cache = step(params, new[:, :4], jnp.arange(4)[None], cache)
  last, _ = step(params, new[:, 4:], jnp.array([[4]]), cache)
  full, _ = _forward(graphdef, params, new)
  np.testing.assert_allclose(to_np(last[0, 0]), to_np(full[0, 4]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_packed_segments_equal_separate_sequences(family):
  cfg = FAMILIES[family]
  graphdef, params = init_params(cfg, mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
  params = perturb(params)
  a = jax.random.randint(jax.random.key(6), (1, 7), 0, cfg.vocab_size)
  b = jax.random.randint(jax.random.key(7), (1, 5), 0, cfg.vocab_size)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 7 + [2] * 5])
  positions = jnp.array([list(range(7)) + list(range(5))])
  out, _ = _forward(graphdef, params, packed, positions_BxL=positions, segment_ids_BxL=segments)
  ref_a, _ = _forward(graphdef, params, a)
  ref_b, _ = _forward(graphdef, params, b)
  np.testing.assert_allclose(to_np(out[:, :7]), to_np(ref_a), atol=1e-5, rtol=0)
  np.testing.assert_allclose(to_np(out[:, 7:]), to_np(ref_b), atol=1e-5, rtol=0)
