"""Small shared pieces for tests: tiny configs of each family and a perturbation."""

import jax
import numpy as np

from rest_jax.models import PRESETS, ModelConfig
from rest_jax.models.config import gemma3_local_layers


def family_configs() -> dict[str, ModelConfig]:
  base = dict(vocab_size=128, num_layers=3, embed_dim=64, num_heads=4, num_kv_heads=2,
              head_dim=16, mlp_dim=128, max_seq_len=64)
  return {
      "llama": PRESETS["tiny"].replace(**base),
      "qwen2": ModelConfig(family="qwen2", qkv_bias=True, rope_theta=1e6, **base),
      # head_dim 24 != embed_dim / num_heads (16), as in every Qwen3.
      "qwen3": ModelConfig(family="qwen3", qk_norm=True, rope_theta=1e6,
                           **{**base, "head_dim": 24}),
      "gemma3": ModelConfig(
          family="gemma3", rope_theta=1e6, rope_local_theta=1e4, norm_scale_offset=1.0,
          activation="gelu_tanh", qk_norm=True, post_norms=True, scale_embeddings=True,
          query_scale=24, sliding_window=4, local_layers=gemma3_local_layers(3, pattern=2),
          **base),
      "llama_untied_scaled": ModelConfig(
          family="llama", tie_embeddings=False,
          rope_scaling=PRESETS["llama3-8b"].rope_scaling, **base),
  }


def perturb(params, seed=0, scale=0.05):
  """Adds noise to every parameter so zero-initialised biases and unit norms matter."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def to_np(x):
  return np.asarray(jax.device_get(x))
