"""A Flax NNX decoder-only transformer for the Llama, Qwen2, Qwen3 and Gemma 3 families.

Layers are stored stacked (a leading `layers` axis) and run with `jax.lax.scan`, so a model
compiles once per shape whatever its depth. Every parameter carries logical axis names in its
`logical_axes` metadata; `runtime/mesh.py` turns them into shardings.

Attention takes an optional KV cache. Cache slot s holds absolute position s of its row, so a
row can be refilled with a new prompt at any time (continuous batching): entries past the
row's position are masked out until overwritten.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models import attention
from rest_jax.models.config import ModelConfig

_NEG_INF = -1e30


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer: [layers, batch, cache_length, kv_heads, head_dim]."""

  k: jax.Array
  v: jax.Array

  LOGICAL = ("layers", "batch", "cache_length", "kv_heads", "head_dim")

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> "KVCache":
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  @property
  def length(self) -> int:
    return self.k.shape[2]


def _param(rngs: nnx.Rngs, shape, names, dtype, stddev: float | None = None, value=None):
  if value is None:
    value = jax.random.normal(rngs.params(), shape, jnp.float32) * stddev
  return nnx.Param(jnp.asarray(value, dtype), logical_axes=tuple(names))


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, names, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.norm_eps
    self.offset = cfg.norm_scale_offset
    # Stored so that offset + scale == 1 at initialisation.
    self.scale = _param(rngs, (dim,), names, cfg.param_dtype,
                        value=jnp.full((dim,), 1.0 - cfg.norm_scale_offset))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


def apply_rope(x_BxLxNxH, positions_BxL, inv_freq_F):
  """Rotary embedding, half-split (GPT-NeoX / Hugging Face) layout."""
  angles = positions_BxL[..., None].astype(jnp.float32) * inv_freq_F  # BxLxF
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = cfg.param_dtype
    self.cfg = cfg
    self.q = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pd, d ** -0.5)
    self.k = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd, d ** -0.5)
    self.v = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd, d ** -0.5)
    self.o = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pd,
                    (n * h) ** -0.5 / math.sqrt(2 * cfg.num_layers))
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, (n, h), ("heads", "head_dim"), pd, value=jnp.zeros((n, h)))
      self.k_bias = _param(rngs, (k, h), ("kv_heads", "head_dim"), pd, value=jnp.zeros((k, h)))
      self.v_bias = _param(rngs, (k, h), ("kv_heads", "head_dim"), pd, value=jnp.zeros((k, h)))
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, ("head_dim",), cfg, rngs=rngs)
      self.k_norm = RMSNorm(h, ("head_dim",), cfg, rngs=rngs)

  def __call__(self, x_BxLxD, positions_BxL, inv_freq_F, window, segment_ids_BxL, cache_kv,
               return_kv: bool = False):
    """Without a cache: causal self-attention over the rows (`models/attention.py` picks the
    kernel), returning this call's keys and values when `return_kv`. With one: the rows' new
    keys and values are written at their positions and queries read the whole cache."""
    cfg = self.cfg
    dt = x_BxLxD.dtype
    q = jnp.einsum("bld,dnh->blnh", x_BxLxD, self.q[...].astype(dt))
    k = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.k[...].astype(dt))
    v = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.v[...].astype(dt))
    if cfg.qkv_bias:
      q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt),
                 v + self.v_bias[...].astype(dt))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions_BxL, inv_freq_F)
    k = apply_rope(k, positions_BxL, inv_freq_F)
    q = mesh_lib.constrain(q, ("batch", "length", "heads", "head_dim"))

    if cache_kv is None:
      out = attention.self_attention(
          q, k, v, segment_ids_BxT=segment_ids_BxL, window=window,
          static_window=cfg.sliding_window, scale=cfg.attn_scale,
          implementation=cfg.attention)
      new_cache = (k, v) if return_kv else None
    else:
      ck, cv = cache_kv
      start_B = positions_BxL[:, 0]
      write = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (s, 0, 0)))
      ck = write(ck, k.astype(ck.dtype), start_B)
      cv = write(cv, v.astype(cv.dtype), start_B)
      new_cache = (ck, cv)
      keys, values = ck.astype(dt), cv.astype(dt)
      k_pos = jnp.broadcast_to(jnp.arange(ck.shape[1]), (ck.shape[0], ck.shape[1]))
      mask_BxTxS = k_pos[:, None, :] <= positions_BxL[:, :, None]
      dist_BxTxS = positions_BxL[:, :, None] - k_pos[:, None, :]
      mask_BxTxS = mask_BxTxS & ((window == 0) | (dist_BxTxS < window))
      b, t, n, h = q.shape
      kvh = keys.shape[2]
      q = q.reshape(b, t, kvh, n // kvh, h)
      scores = jnp.einsum("btkgh,bskh->bkgts", q, keys).astype(jnp.float32) * cfg.attn_scale
      scores = jnp.where(mask_BxTxS[:, None, None], scores, _NEG_INF)
      probs = jax.nn.softmax(scores, axis=-1).astype(dt)
      out = jnp.einsum("bkgts,bskh->btkgh", probs, values).reshape(b, t, n, h)
    out = jnp.einsum("blnh,nhd->bld", out, self.o[...].astype(dt))
    return out, new_cache


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, m, pd = cfg.embed_dim, cfg.mlp_dim, cfg.param_dtype
    self.activation = cfg.activation
    self.gate = _param(rngs, (d, m), ("embed", "mlp"), pd, d ** -0.5)
    self.up = _param(rngs, (d, m), ("embed", "mlp"), pd, d ** -0.5)
    self.down = _param(rngs, (m, d), ("mlp", "embed"), pd,
                       m ** -0.5 / math.sqrt(2 * cfg.num_layers))

  def __call__(self, x_BxLxD):
    dt = x_BxLxD.dtype
    gate = x_BxLxD @ self.gate[...].astype(dt)
    up = x_BxLxD @ self.up[...].astype(dt)
    if self.activation == "silu":
      act = jax.nn.silu(gate)
    else:
      act = jax.nn.gelu(gate, approximate=True)
    h = mesh_lib.constrain(act * up, ("batch", "length", "mlp"))
    return h @ self.down[...].astype(dt)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.post_norms = cfg.post_norms
    self.attn_norm = RMSNorm(cfg.embed_dim, ("embed",), cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.embed_dim, ("embed",), cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    if cfg.post_norms:
      self.attn_post_norm = RMSNorm(cfg.embed_dim, ("embed",), cfg, rngs=rngs)
      self.mlp_post_norm = RMSNorm(cfg.embed_dim, ("embed",), cfg, rngs=rngs)

  def __call__(self, x, positions, inv_freq, window, segment_ids, cache_kv,
               return_kv: bool = False):
    h, new_cache = self.attn(self.attn_norm(x), positions, inv_freq, window, segment_ids,
                             cache_kv, return_kv)
    if self.post_norms:
      h = self.attn_post_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm(x))
    if self.post_norms:
      h = self.mlp_post_norm(h)
    x = mesh_lib.constrain(x + h, ("batch", "length", "embed"))
    return x, new_cache


class Transformer(nnx.Module):
  """tokens [B, L] -> logits [B, L, V] (float32), and the updated KV cache if one is given.

  With `return_hidden=True` the first output is instead the final-normed hidden states
  [B, L, D] (what a reward model's scalar head reads); the vocabulary projection is skipped.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False):
    self.config = cfg
    self.remat = remat
    self.embed = _param(rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                        cfg.param_dtype, 1.0 if cfg.scale_embeddings else 0.02)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs):
      return Block(cfg, rngs=rngs)

    self.layers = make_layers(rngs)
    self.final_norm = RMSNorm(cfg.embed_dim, ("embed",), cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                            cfg.param_dtype, cfg.embed_dim ** -0.5)

  def __call__(self, tokens_BxL, positions_BxL=None, *, segment_ids_BxL=None,
               cache: KVCache | None = None, return_hidden: bool = False):
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    # Gather from a table replicated over vocab: a vocab-sharded gather makes XLA replicate
    # the whole output instead.
    table = mesh_lib.constrain(self.embed[...], (None, "embed"))
    x = jnp.take(table, tokens_BxL, axis=0).astype(dt)
    if cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(cfg.embed_dim), dt)
    x = mesh_lib.constrain(x, ("batch", "length", "embed"))

    graphdef, layer_state = nnx.split(self.layers)
    consts = (jnp.asarray(cfg.layer_inv_freq()), jnp.asarray(cfg.layer_windows()))
    cache_kv = None if cache is None else (cache.k, cache.v)

    def body(x, xs):
      state, (inv_freq, window), kv = xs
      block = nnx.merge(graphdef, state)
      x, new_kv = block(x, positions_BxL, inv_freq, window, segment_ids_BxL, kv)
      return x, new_kv

    if self.remat:
      body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    x, new_kv = jax.lax.scan(body, x, (layer_state, consts, cache_kv))

    x = self.final_norm(x)
    new_cache = None if cache is None else KVCache(*new_kv)
    if return_hidden:
      return mesh_lib.constrain(x, ("batch", "length", "embed")), new_cache
    return output_logits(cfg, self.output_weights(), x), new_cache

  def output_weights(self):
    """The vocabulary projection: the embedding table [V, D] when tied, else lm_head [D, V]."""
    return self.embed[...] if self.config.tie_embeddings else self.lm_head[...]


def output_logits(cfg: ModelConfig, weights, x_BxLxD):
  """float32 logits [B, L, V] of final-normed hidden states (`Transformer.output_weights`)."""
  dt = x_BxLxD.dtype
  if cfg.tie_embeddings:
    logits = jnp.einsum("bld,vd->blv", x_BxLxD, weights.astype(dt))
  else:
    logits = x_BxLxD @ weights.astype(dt)
  logits = logits.astype(jnp.float32)
  if cfg.final_logit_softcap:
    logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
  return mesh_lib.constrain(logits, ("batch", "length", "vocab"))
