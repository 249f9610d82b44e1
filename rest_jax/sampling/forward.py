"""The sampler's forward passes: prefill and one decode step, over the model's own parameters.

Both run the layers of `rest_jax.models.Transformer` from the same `(graphdef, params)` the
train step uses (no copy of the weights): embeddings, norms, MLPs and the prefill attention are
the model's own modules. Two things differ from `Transformer.__call__`:

* Prefill computes the output head only at each prompt's last token (the model computes it at
  every position; for a 256-token prompt and a 49k vocabulary that is a fifth of the work).
* Decode keeps its own KV cache, `DecodeCache`, laid out `[layers, slots, kv_heads, length,
  head_dim]` and carried through the layer scan, so each step writes one position per row in
  place. The model's cache is a scan input/output, which copies the whole cache every step;
  for a decode step that copy costs more than the attention itself.

`tests/test_sampling.py` checks both against full forwards of the model for every family.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models.config import ModelConfig
from rest_jax.models.transformer import apply_rope

_NEG_INF = -1e30


def storage_dtype(dtype) -> jnp.dtype:
  """How a cache dtype is stored: bfloat16 as its uint16 bit pattern.

  XLA:CPU cannot update a bfloat16 buffer in place (it widens the whole buffer to float32 for
  every one-position write); an integer buffer it updates in place. The bit cast is free.
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.bfloat16:
    return jnp.dtype(jnp.uint16)
  if dtype != jnp.float32:
    raise ValueError(f"cache_dtype must be float32 or bfloat16, got {dtype}")
  return dtype


def to_storage(x, storage):
  if storage == jnp.uint16:
    return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
  return x.astype(storage)


def from_storage(x, dtype):
  if x.dtype == jnp.uint16:
    x = jax.lax.bitcast_convert_type(x, jnp.bfloat16)
  return x.astype(dtype)


@flax.struct.dataclass
class DecodeCache:
  """Keys and values of every layer: [layers, rows, kv_heads, length, head_dim].

  Arrays hold `storage_dtype(cache_dtype)`: float32, or bfloat16 bits as uint16.
  """

  k: jax.Array
  v: jax.Array

  LOGICAL = ("layers", "batch", "kv_heads", "cache_length", "head_dim")

  @staticmethod
  def shape(cfg: ModelConfig, rows: int, length: int) -> tuple[int, ...]:
    return (cfg.num_layers, rows, cfg.num_kv_heads, length, cfg.head_dim)

  @classmethod
  def zeros(cls, cfg: ModelConfig, rows: int, length: int, dtype) -> "DecodeCache":
    shape, storage = cls.shape(cfg, rows, length), storage_dtype(dtype)
    return cls(jnp.zeros(shape, storage), jnp.zeros(shape, storage))

  @property
  def length(self) -> int:
    return self.k.shape[3]

  @property
  def nbytes(self) -> int:
    return self.k.nbytes + self.v.nbytes


def _embed(model, tokens_BxL):
  """The model's token embedding (as in `Transformer.__call__`)."""
  cfg = model.config
  dt = jnp.dtype(cfg.dtype)
  table = mesh_lib.constrain(model.embed[...], (None, "embed"))
  x = jnp.take(table, tokens_BxL, axis=0).astype(dt)
  if cfg.scale_embeddings:
    x = x * jnp.asarray(math.sqrt(cfg.embed_dim), dt)
  return mesh_lib.constrain(x, ("batch", "length", "embed"))


def _head(model, x_BxLxD):
  """Final norm, output projection and soft-cap (as in `Transformer.__call__`)."""
  cfg = model.config
  dt = x_BxLxD.dtype
  x = model.final_norm(x_BxLxD)
  if cfg.tie_embeddings:
    logits = jnp.einsum("bld,vd->blv", x, model.embed[...].astype(dt))
  else:
    logits = x @ model.lm_head[...].astype(dt)
  logits = logits.astype(jnp.float32)
  if cfg.final_logit_softcap:
    logits = jnp.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
  return mesh_lib.constrain(logits, ("batch", "length", "vocab"))


def _layer_consts(cfg: ModelConfig):
  return jnp.asarray(cfg.layer_inv_freq()), jnp.asarray(cfg.layer_windows())


def prefill(graphdef, params, tokens_PxT, lengths_P, kv_dtype):
  """Runs prompts (right-padded to T) through the model.

  Returns (logits at each prompt's last token [P, V] float32, DecodeCache of length T). Cache
  entries at and past a prompt's length hold padding; decoding overwrites them before any
  query can see them.
  """
  model = nnx.merge(graphdef, params)
  cfg = model.config
  p, t = tokens_PxT.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (p, t))
  x = _embed(model, tokens_PxT)
  layer_graphdef, layer_state = nnx.split(model.layers)

  def body(x, xs):
    state, (inv_freq, window) = xs
    block = nnx.merge(layer_graphdef, state)
    # Self-attention over the prompt rows (the platform's fused kernel), keeping the keys
    # and values for the cache.
    return block(x, positions, inv_freq, window, None, None, return_kv=True)

  x, (k, v) = jax.lax.scan(body, x, (layer_state, _layer_consts(cfg)))
  last = x[jnp.arange(p), lengths_P - 1][:, None]
  logits = _head(model, last)[:, 0]
  # [L, P, T, Kv, H] -> [L, P, Kv, T, H]
  to_rows = lambda a: to_storage(jnp.swapaxes(a, 2, 3), storage_dtype(kv_dtype))
  return logits, DecodeCache(to_rows(k), to_rows(v))


def _decode_attention(attn, x_Bx1xD, pos_B, inv_freq, layer_window, ck, cv, layer, window):
  """One query per row against its cache rows; writes this step's key and value in place."""
  cfg = attn.cfg
  dt = x_Bx1xD.dtype
  b = x_Bx1xD.shape[0]
  q = jnp.einsum("bld,dnh->blnh", x_Bx1xD, attn.q[...].astype(dt))
  k = jnp.einsum("bld,dkh->blkh", x_Bx1xD, attn.k[...].astype(dt))
  v = jnp.einsum("bld,dkh->blkh", x_Bx1xD, attn.v[...].astype(dt))
  if cfg.qkv_bias:
    q, k, v = (q + attn.q_bias[...].astype(dt), k + attn.k_bias[...].astype(dt),
               v + attn.v_bias[...].astype(dt))
  if cfg.qk_norm:
    q, k = attn.q_norm(q), attn.k_norm(k)
  q = apply_rope(q, pos_B[:, None], inv_freq)
  k = apply_rope(k, pos_B[:, None], inv_freq)
  q = mesh_lib.constrain(q, ("batch", "length", "heads", "head_dim"))

  rows = jnp.arange(b)
  ck = ck.at[layer, rows, :, pos_B].set(to_storage(k[:, 0], ck.dtype))
  cv = cv.at[layer, rows, :, pos_B].set(to_storage(v[:, 0], cv.dtype))
  keys = jax.lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False)     # [B, Kv, C, H]
  values = jax.lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False)
  if window is not None and window < keys.shape[2]:
    keys, values = keys[:, :, :window], values[:, :, :window]
  keys, values = from_storage(keys, dt), from_storage(values, dt)

  n, h = q.shape[2], q.shape[3]
  kvh = keys.shape[1]
  q = q.reshape(b, kvh, n // kvh, h)
  # Scores as [C, H] cache rows times [H, G] queries: a plain GEMM per (row, kv head).
  scores = jnp.einsum("bkch,bkgh->bkcg", keys, q).astype(jnp.float32) * cfg.attn_scale
  k_pos = jnp.arange(keys.shape[2], dtype=jnp.int32)
  dist = pos_B[:, None] - k_pos[None, :]
  mask = (dist >= 0) & ((layer_window == 0) | (dist < layer_window))
  scores = jnp.where(mask[:, None, :, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=2).astype(dt)
  out = jnp.einsum("bkcg,bkch->bkgh", probs, values).reshape(b, 1, n, h)
  out = jnp.einsum("blnh,nhd->bld", out, attn.o[...].astype(dt))
  return out, ck, cv


def decode_step(graphdef, params, cache: DecodeCache, tokens_B, positions_B,
                window: int | None = None, unroll: int | bool = 1):
  """Feeds one token per row at its position; returns (logits [B, V] float32, cache).

  `window` (static) limits attention to the first `window` cache entries: every row's
  position must be below it. `unroll` is the layer scan's unroll factor (`True`: all layers).
  Rows are independent: a row's result never depends on another.
  """
  model = nnx.merge(graphdef, params)
  cfg = model.config
  x = _embed(model, tokens_B[:, None])
  layer_graphdef, layer_state = nnx.split(model.layers)
  inv_freqs, windows = _layer_consts(cfg)

  def body(carry, xs):
    x, ck, cv = carry
    state, inv_freq, layer_window, layer = xs
    block = nnx.merge(layer_graphdef, state)
    h, ck, cv = _decode_attention(block.attn, block.attn_norm(x), positions_B, inv_freq,
                                  layer_window, ck, cv, layer, window)
    if cfg.post_norms:
      h = block.attn_post_norm(h)
    x = x + h
    h = block.mlp(block.mlp_norm(x))
    if cfg.post_norms:
      h = block.mlp_post_norm(h)
    x = mesh_lib.constrain(x + h, ("batch", "length", "embed"))
    return (x, ck, cv), None

  xs = (layer_state, inv_freqs, windows, jnp.arange(cfg.num_layers, dtype=jnp.int32))
  (x, ck, cv), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs, unroll=unroll)
  return _head(model, x)[:, 0], DecodeCache(ck, cv)
