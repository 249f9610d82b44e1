"""Causal self-attention over whole rows (training, prefill), with a kernel chosen by platform.

* `xla`: einsums that materialise the float32 [batch, kv_heads, group, length, length] scores;
  runs everywhere, and is the reference the kernels are tested against.
* `splash`: Pallas splash attention on TPU (`jax.experimental.pallas.ops.tpu`), run per device
  inside `shard_map` (a Mosaic kernel cannot be partitioned by the compiler), batch split over
  the mesh's batch axes and kv heads over `tensor` where they divide. Scores never leave VMEM.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on GPU (flash attention).
* `auto`: `splash` on TPU, `cudnn` on GPU, `xla` elsewhere; the platform is the current mesh's.

All take the same masking: causal by position in the row, the same packed segment only
(`segment_ids`), and for sliding-window layers at most `window - 1` positions back. A layer's
window is a traced value inside the layer scan, so the kernels, whose masks are static, run
under a `lax.cond` between the global and the sliding-window variant.

Decoding over the KV cache keeps the XLA path (sampling/forward.py): jax's paged and ragged
paged attention kernels read a `[kv_heads, pages, page_size, head_dim]` page pool, and the
sampler's cache is `[layers, slots, kv_heads, length, head_dim]` with one contiguous row per
slot. Serving it through them would mean a page table over every slot and a layout change of
the cache for no saving: a decode step reads each live cache row once either way.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rest_jax.runtime import mesh as mesh_lib

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
_NEG_INF = -1e30
# Splash blocks: a multiple of the TPU lane width; rows whose length is not a multiple of it
# (short prefill buckets) take the XLA path.
SPLASH_BLOCK = 128


def resolve(implementation: str, platform: str | None = None) -> str:
  """The implementation `auto` stands for on `platform` (default: the current mesh's)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if implementation != "auto":
    return implementation
  platform = platform or current_platform()
  return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")


def current_platform() -> str:
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform
  return jax.default_backend()


def self_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, *, segment_ids_BxT, window,
                   static_window: int | None, scale: float, implementation: str = "auto"):
  """softmax(q k^T * scale, masked) v -> [B, T, N, H], in q's dtype (scores in float32).

  `window` is this layer's window (0: global), possibly traced; `static_window` the model's
  sliding window (None when every layer is global), which the kernels' static masks use.
  Off TPU, `splash` runs the Pallas kernel in interpret mode (how CPU tests check it).
  """
  impl = resolve(implementation)
  interpret = current_platform() != "tpu"
  t = q_BxTxNxH.shape[1]
  if impl == "splash" and t % SPLASH_BLOCK:
    impl = "xla"
  if impl == "xla":
    return _xla(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, window, scale)
  kernel = {"splash": functools.partial(_splash, interpret=interpret), "cudnn": _cudnn}[impl]
  run = lambda w: kernel(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, w, scale)
  if not static_window:
    return run(None)
  if isinstance(window, int):
    return run(static_window if window else None)
  return jax.lax.cond(window > 0, lambda: run(static_window), lambda: run(None))


def _xla(q, k, v, segment_ids, window, scale):
  b, t, n, h = q.shape
  kvh = k.shape[2]
  idx = jnp.arange(t)
  dist_TxS = idx[:, None] - idx[None, :]
  mask_BxTxS = jnp.broadcast_to(dist_TxS >= 0, (b, t, t))
  if segment_ids is not None:
    mask_BxTxS = mask_BxTxS & (segment_ids[:, :, None] == segment_ids[:, None, :])
  mask_BxTxS = mask_BxTxS & ((window == 0) | (dist_TxS < window))
  q = q.reshape(b, t, kvh, n // kvh, h)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32) * scale
  scores = jnp.where(mask_BxTxS[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, h)


def _cudnn(q, k, v, segment_ids, window, scale, implementation="cudnn"):
  mask = None
  if segment_ids is not None:
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  return jax.nn.dot_product_attention(
      q, k, v, mask=mask, scale=scale, is_causal=True,
      local_window_size=None if window is None else (window - 1, 0),
      implementation=implementation)


def _splash(q, k, v, segment_ids, window, scale, *, interpret=False):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  b, t, n, h = q.shape
  kvh = k.shape[2]
  groups = n // kvh
  block = min(512, t) if t % 512 == 0 else SPLASH_BLOCK
  one = (sm.CausalMask((t, t)) if window is None
         else sm.LocalMask((t, t), window_size=(window - 1, 0), offset=0))
  kernel = sk.make_splash_mqa_single_device(
      sm.MultiHeadMask([one] * groups), interpret=interpret,
      block_sizes=sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                block_q_dkv=block, block_kv_dkv=block,
                                block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block))
  if segment_ids is None:
    segment_ids = jnp.zeros((b, t), jnp.int32)

  def per_device(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, seg_BxT):
    def one_row(q_KxGxTxH, k_KxTxH, v_KxTxH, seg_T):
      ids = sk.SegmentIds(q=seg_T, kv=seg_T)
      return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(
          q_KxGxTxH, k_KxTxH, v_KxTxH)
    return jax.vmap(one_row)(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, seg_BxT)

  # [B, T, N, H] -> [B, K, G, T, H]; the kernel takes queries pre-scaled.
  q5 = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kvh, groups, h).transpose(0, 2, 3, 1, 4)
  k4, v4 = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  segment_ids = segment_ids.astype(jnp.int32)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = per_device(q5, k4, v4, segment_ids)
  else:
    batch = mesh_lib.logical_to_spec(("batch",), (b,), mesh)[0]
    heads = mesh_lib.logical_to_spec(("kv_heads",), (kvh,), mesh)[0]
    out = jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(P(batch, heads), P(batch, heads), P(batch, heads), P(batch)),
        out_specs=P(batch, heads), check_vma=False)(q5, k4, v4, segment_ids)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
