"""The fused attention paths equal the XLA reference in values and gradients.

Splash attention runs in Pallas interpret mode here (its TPU compilation is checked in
test_tpu_compile.py); the cuDNN path is `jax.nn.dot_product_attention` with our masks, run
with its XLA implementation, which checks how causal, window and segment masks are mapped
onto it (a GPU changes only the implementation string).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rest_jax.models import attention
from rest_jax.models.config import ModelConfig, gemma3_local_layers
from rest_jax.models.transformer import Transformer
from rest_jax.runtime import mesh as mesh_lib

B, T, N, K, H = 2, 256, 4, 2, 64
SCALE = 0.125


def _qkv(seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, T, N, H)), jax.random.normal(ks[1], (B, T, K, H)),
          jax.random.normal(ks[2], (B, T, K, H)))


def _packed_segments():
  # Two documents and a padding tail per row, with different boundaries in each row.
  rows = [[1] * 100 + [2] * 120 + [0] * 36, [1] * 30 + [2] * 200 + [3] * 26]
  return jnp.asarray(rows, jnp.int32)


def _kernel(impl):
  if impl == "splash":
    return lambda q, k, v, seg, w: attention._splash(q, k, v, seg, w, SCALE, interpret=True)
  return lambda q, k, v, seg, w: attention._cudnn(q, k, v, seg, w, SCALE, implementation="xla")


@pytest.mark.parametrize("impl", ["splash", "cudnn"])
@pytest.mark.parametrize("window", [None, 48])
def test_kernel_equals_xla_in_values_and_gradients(impl, window):
  q, k, v = _qkv()
  seg = _packed_segments()
  kernel = _kernel(impl)
  ref = lambda q, k, v: attention._xla(q, k, v, seg, window or 0, SCALE)
  got = lambda q, k, v: kernel(q, k, v, seg, window)
  np.testing.assert_allclose(got(q, k, v), ref(q, k, v), atol=2e-5)
  # A loss that weights every output differently, so that no gradient error can cancel.
  w = jax.random.normal(jax.random.key(7), (B, T, N, H))
  grads = jax.grad(lambda *a: jnp.sum(got(*a) * w), argnums=(0, 1, 2))(q, k, v)
  grads_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, grads_ref):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_masks_matter():
  """The reference itself: a window or a segment boundary changes the output."""
  q, k, v = _qkv()
  seg = _packed_segments()
  full = attention._xla(q, k, v, None, 0, SCALE)
  assert float(jnp.abs(attention._xla(q, k, v, seg, 0, SCALE) - full).max()) > 0.1
  assert float(jnp.abs(attention._xla(q, k, v, None, 48, SCALE) - full).max()) > 0.1


def test_resolve_by_platform():
  assert attention.resolve("auto", "tpu") == "splash"
  assert attention.resolve("auto", "gpu") == "cudnn"
  assert attention.resolve("auto", "cpu") == "xla"
  assert attention.resolve("xla", "tpu") == "xla"
  with pytest.raises(ValueError, match="attention implementation"):
    attention.resolve("flash", "tpu")
  with pytest.raises(ValueError, match="attention must be"):
    ModelConfig(family="llama", vocab_size=64, num_layers=1, embed_dim=32, num_heads=2,
                num_kv_heads=1, head_dim=16, mlp_dim=64, attention="flash")


def _gemma_like(impl):
  # Alternating sliding-window and global layers, GQA, q/k norms: every masking path at once.
  return ModelConfig(family="gemma3", vocab_size=128, num_layers=2, embed_dim=64, num_heads=4,
                     num_kv_heads=2, head_dim=32, mlp_dim=128, max_seq_len=T,
                     norm_scale_offset=1.0, qk_norm=True, post_norms=True, sliding_window=48,
                     local_layers=gemma3_local_layers(2, 2), attention=impl)


def test_model_with_splash_on_a_mesh_equals_xla():
  """The whole model, sharded over (fsdp=4, tensor=2), packed rows: loss and gradients."""
  mesh = mesh_lib.create_mesh((1, 4, 2))
  tokens = jax.random.randint(jax.random.key(1), (8, T), 0, 128)
  seg = jnp.tile(_packed_segments(), (4, 1))
  positions = jnp.asarray(np.concatenate([np.arange(n) for n in (100, 120, 36)]))[None]
  positions = jnp.tile(jnp.concatenate(
      [positions, jnp.asarray(np.concatenate([np.arange(n) for n in (30, 200, 26)]))[None]]),
                       (4, 1))
  results = {}
  for impl in ("xla", "splash"):
    model = Transformer(_gemma_like(impl), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(p):
      logits, _ = nnx.merge(graphdef, p)(tokens, positions, segment_ids_BxL=seg)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    with jax.set_mesh(mesh):
      results[impl] = jax.jit(jax.value_and_grad(loss))(params)
  (l_x, g_x), (l_s, g_s) = results["xla"], results["splash"]
  np.testing.assert_allclose(l_s, l_x, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-3)
