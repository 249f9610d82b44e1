"""The sampler's forward passes: prefill and one decode step, over the model's own parameters.

Both run the layers of `rest_jax.models.Transformer` from the same `(graphdef, params)` the
train step uses (no copy of the weights): embeddings, norms, MLPs and the prefill attention are
the model's own modules. Two things differ from `Transformer.__call__`:

* Prefill computes the output head only at each prompt's last token (the model computes it at
  every position; for a 256-token prompt and a 49k vocabulary that is a fifth of the work).
* Decode reads two caches, both `DecodeCache` laid out `[layers, rows, kv_heads, length,
  head_dim]`: the prompt store (one row per prompt, shared by a group of slots that sample it)
  and the completion cache (one row per slot, holding only its own tokens). Attention over
  the prompt is one matrix product for the whole group (each prompt is read once per step,
  however many of its samples decode; Hydragen's shared-prefix attention), attention over the
  slot's own tokens is per slot, and the two are merged into one exact softmax. Both caches are
  read-only inputs of the layer scan; the step's new keys and values come out of it and are
  written in place afterwards, so the program holds no second copy of a cache.

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


def _embed(model, tokens_BxL, replicate_table: bool = True):
  """The model's token embedding (as in `Transformer.__call__`)."""
  cfg = model.config
  dt = jnp.dtype(cfg.dtype)
  table = model.embed[...]
  if replicate_table:
    table = mesh_lib.constrain(table, (None, "embed"))
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


def _masked_scores(scores, mask):
  return jnp.where(mask, scores, _NEG_INF)


def _window_ok(dist, layer_window):
  return (layer_window == 0) | (dist < layer_window)


def _decode_attention(attn, x_Sx1xD, pos_S, step_S, inv_freq, layer_window, pk, pv, ck, cv,
                      window):
  """One query per slot against its prompt's keys (in the store, shared by the slot's group)
  and its own completion's keys (in its cache), merged into one exact softmax.

  `pk, pv` [R, Kv, T, H]: this layer's prompt store, row r the prompt of slots
  r*g .. r*g+g-1. `ck, cv` [S, Kv, N, H]: the completions; slot s's entry n holds position
  plen_s + n. Returns (attention output [S, 1, D], this step's key and value [S, Kv, H] in
  storage dtype), written into the cache by the caller.
  """
  cfg = attn.cfg
  dt = x_Sx1xD.dtype
  s_count = x_Sx1xD.shape[0]
  q = jnp.einsum("bld,dnh->blnh", x_Sx1xD, attn.q[...].astype(dt))
  k = jnp.einsum("bld,dkh->blkh", x_Sx1xD, attn.k[...].astype(dt))
  v = jnp.einsum("bld,dkh->blkh", x_Sx1xD, attn.v[...].astype(dt))
  if cfg.qkv_bias:
    q, k, v = (q + attn.q_bias[...].astype(dt), k + attn.k_bias[...].astype(dt),
               v + attn.v_bias[...].astype(dt))
  if cfg.qk_norm:
    q, k = attn.q_norm(q), attn.k_norm(k)
  q = apply_rope(q, pos_S[:, None], inv_freq)
  k = apply_rope(k, pos_S[:, None], inv_freq)
  q = mesh_lib.constrain(q, ("batch", "length", "heads", "head_dim"))
  k_new = to_storage(k[:, 0], ck.dtype)          # [S, Kv, H], as the cache will hold it
  v_new = to_storage(v[:, 0], cv.dtype)

  rows, kvh, t_len, h = pk.shape
  n = q.shape[2]
  g, gq = s_count // rows, n // kvh
  q = q.reshape(s_count, kvh, gq, h)
  plen_S = pos_S - step_S + 1                    # the position of completion entry 0
  scale = cfg.attn_scale

  # Prefix: a group's queries against its prompt row, read once for the whole group.
  qg = q.reshape(rows, g, kvh, gq, h)
  keys_p, values_p = from_storage(pk, dt), from_storage(pv, dt)
  s_p = jnp.einsum("rkth,rskqh->rksqt", keys_p, qg).astype(jnp.float32) * scale
  t_pos = jnp.arange(t_len, dtype=jnp.int32)
  pos_RxG = pos_S.reshape(rows, g)
  mask_p = ((t_pos[None, None] < plen_S.reshape(rows, g)[:, :, None])
            & _window_ok(pos_RxG[:, :, None] - t_pos[None, None], layer_window))
  s_p = _masked_scores(s_p, mask_p[:, None, :, None, :])

  # Suffix: each slot against its own completion so far (entries before this step's).
  if window is not None and window < ck.shape[2]:
    ck, cv = ck[:, :, :window], cv[:, :, :window]
  keys_s, values_s = from_storage(ck, dt), from_storage(cv, dt)
  s_s = jnp.einsum("sknh,skqh->skqn", keys_s, q).astype(jnp.float32) * scale
  n_pos = jnp.arange(keys_s.shape[2], dtype=jnp.int32)
  mask_s = ((n_pos[None] < (step_S - 1)[:, None])
            & _window_ok(pos_S[:, None] - plen_S[:, None] - n_pos[None], layer_window))
  s_s = _masked_scores(s_s, mask_s[:, None, None, :])

  # This step's own key (always visible).
  k_self, v_self = from_storage(k_new, dt), from_storage(v_new, dt)
  s_0 = jnp.einsum("skqh,skh->skq", q, k_self).astype(jnp.float32) * scale

  # One softmax over the three parts: a shared maximum, then sums and weighted values.
  m_p = jnp.max(s_p, axis=-1).transpose(0, 2, 1, 3).reshape(s_count, kvh, gq)
  m = jnp.maximum(jnp.maximum(m_p, jnp.max(s_s, axis=-1)), s_0)
  m_g = m.reshape(rows, g, kvh, gq).transpose(0, 2, 1, 3)[..., None]
  e_p = jnp.exp(s_p - m_g)
  e_s = jnp.exp(s_s - m[..., None])
  e_0 = jnp.exp(s_0 - m)
  den = (jnp.sum(e_p, axis=-1).transpose(0, 2, 1, 3).reshape(s_count, kvh, gq)
         + jnp.sum(e_s, axis=-1) + e_0)
  o_p = jnp.einsum("rksqt,rkth->rskqh", e_p.astype(dt), values_p).reshape(s_count, kvh, gq, h)
  o_s = jnp.einsum("skqn,sknh->skqh", e_s.astype(dt), values_s)
  o = (o_p.astype(jnp.float32) + o_s.astype(jnp.float32)
       + e_0[..., None] * v_self[:, :, None, :].astype(jnp.float32))
  out = (o / den[..., None]).astype(dt).reshape(s_count, 1, n, h)
  out = jnp.einsum("blnh,nhd->bld", out, attn.o[...].astype(dt))
  return out, k_new, v_new


def decode_step(graphdef, params, store: DecodeCache, cache: DecodeCache, tokens_S,
                positions_S, steps_S, window: int | None = None, unroll: int | bool = 1):
  """Feeds one token per slot at its position; returns (logits [S, V] float32, cache with
  this step's keys and values written).

  `store` [layers, R, ...] holds the prompts, one per group of S / R consecutive slots;
  `cache` [layers, S, ...] the completions. `steps_S` counts the tokens each slot has drawn
  (this token is its `steps_S`-th), so its key and value go to completion entry
  `steps_S - 1`. `window` (static) limits the completion part to its first `window` entries:
  every slot's step must be at most `window`. `unroll` is the layer scan's unroll factor.
  A slot's result depends only on its own prompt and completion, never on another slot's.
  """
  model = nnx.merge(graphdef, params)
  cfg = model.config
  # The table keeps its layout (vocabulary-split when serving): each chip looks up the ids
  # in its part and the rows are summed, instead of gathering the table.
  x = _embed(model, tokens_S[:, None], replicate_table=False)
  layer_graphdef, layer_state = nnx.split(model.layers)
  inv_freqs, windows = _layer_consts(cfg)

  def body(x, xs):
    state, inv_freq, layer_window, pk, pv, ck, cv = xs
    block = nnx.merge(layer_graphdef, state)
    h, k_new, v_new = _decode_attention(block.attn, block.attn_norm(x), positions_S, steps_S,
                                        inv_freq, layer_window, pk, pv, ck, cv, window)
    if cfg.post_norms:
      h = block.attn_post_norm(h)
    x = x + h
    h = block.mlp(block.mlp_norm(x))
    if cfg.post_norms:
      h = block.mlp_post_norm(h)
    x = mesh_lib.constrain(x + h, ("batch", "length", "embed"))
    return x, (k_new, v_new)

  # The caches are scan inputs, read one layer at a time and never carried: the step's keys
  # and values come out as [layers, S, Kv, H] and are written below, in place, so no second
  # copy of the cache is made.
  xs = (layer_state, inv_freqs, windows, store.k, store.v, cache.k, cache.v)
  x, (k_new, v_new) = jax.lax.scan(body, x, xs, unroll=unroll)
  return _head(model, x)[:, 0], write_step(cache, k_new, v_new, steps_S)


def write_step(cache: DecodeCache, k_LxSxKxH, v_LxSxKxH, steps_S) -> DecodeCache:
  """Writes each slot's new key and value at completion entry `steps_S - 1` (clamped: a
  finished slot's write lands in its own row, which it no longer reads)."""
  n_layers, slots, kv_heads = k_LxSxKxH.shape[:3]
  # One (layer, slot, kv head, entry) index per head_dim row: the indexed dimensions are the
  # cache's leading four in order, so the scatter updates the layout the layer scan reads (a
  # window of [Kv, H] would make the TPU compiler copy the cache into another layout when a
  # chip holds several KV heads).
  layer = jnp.arange(n_layers)[:, None, None]
  slot = jnp.arange(slots)[None, :, None]
  head = jnp.arange(kv_heads)[None, None, :]
  entry = jnp.clip(steps_S - 1, 0, cache.length - 1)[None, :, None]
  put = lambda c, x: c.at[layer, slot, head, entry].set(x, unique_indices=True)
  return DecodeCache(put(cache.k, k_LxSxKxH), put(cache.v, v_LxSxKxH))
