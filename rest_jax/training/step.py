"""The loss, the optimizer and the sharded train step.

Batches use t5x's decoder feature names: `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights` (0 on prompt and padding, the example's weight on completion tokens),
`decoder_segment_ids` and `decoder_positions` (packing).
"""

from __future__ import annotations

from typing import Callable

import gin
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rest_jax.models import transformer
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.training import state as state_lib

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


@gin.configurable
def make_optimizer(learning_rate: float = 1e-4, warmup_steps: int = 0, total_steps: int = 1000,
                   decay: str = "cosine", end_learning_rate_fraction: float = 0.1,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.95,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine, linear or constant decay, and norm clipping."""
  end = learning_rate * end_learning_rate_fraction
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  decay_steps = max(1, total_steps - warmup_steps)
  if decay == "cosine":
    after = optax.cosine_decay_schedule(learning_rate, decay_steps, end / learning_rate)
  elif decay == "linear":
    after = optax.linear_schedule(learning_rate, end, decay_steps)
  elif decay == "constant":
    after = optax.constant_schedule(learning_rate)
  else:
    raise ValueError(f"make_optimizer.decay={decay!r}: expected 'cosine', 'linear' or 'constant'")
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps])
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
  return optax.chain(*parts)


def token_nll(logits_BxLxV, targets_BxL):
  """-log softmax(logits)[target]. The target logit is picked with a compare against an iota
  rather than a gather: the gradient is then one fused elementwise pass over [B, L, V], where a
  gather's gradient is a zero-filled [B, L, V] buffer plus a scatter."""
  logits = logits_BxLxV.astype(jnp.float32)
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  picked = jnp.sum(jnp.where(vocab == targets_BxL[..., None], logits, 0.0), axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - picked


def chunked_token_nll(cfg, weights, hidden_BxLxD, targets_BxL, chunk_len: int | None):
  """`token_nll` of the output logits, `chunk_len` positions at a time.

  The [B, L, V] float32 logits of a large vocabulary are the largest buffer of a train step
  (Qwen3's 152k entries at 16 rows x 1024 positions per chip: 10 GB, and their gradient as
  much again). Here they exist one chunk at a time: a rematerialised scan over chunks computes
  each chunk's logits, its NLL and, in the backward pass, its logits again, so the step holds
  [B, chunk_len, V] at most, for one more pass of the output projection.
  """
  b, length, d = hidden_BxLxD.shape
  if not chunk_len or length <= chunk_len:
    return token_nll(transformer.output_logits(cfg, weights, hidden_BxLxD), targets_BxL)
  n = -(-length // chunk_len)
  pad = n * chunk_len - length
  h = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
  h_NxBxCxD = h.reshape(b, n, chunk_len, d).swapaxes(0, 1)
  t_NxBxC = t.reshape(b, n, chunk_len).swapaxes(0, 1)

  @jax.checkpoint
  def one(w, h_BxCxD, t_BxC):
    return token_nll(transformer.output_logits(cfg, w, h_BxCxD), t_BxC)

  _, nll_NxBxC = jax.lax.scan(lambda c, xs: (c, one(weights, *xs)), None, (h_NxBxCxD, t_NxBxC))
  return nll_NxBxC.swapaxes(0, 1).reshape(b, n * chunk_len)[:, :length]


def loss_and_metrics(graphdef, params, batch, loss_chunk_len: int | None = None):
  """Weighted completion NLL, normalised by the number of completion tokens."""
  model = nnx.merge(graphdef, params)
  hidden, _ = model(batch["decoder_input_tokens"], batch.get("decoder_positions"),
                    segment_ids_BxL=batch.get("decoder_segment_ids"), return_hidden=True)
  nll_BxL = chunked_token_nll(model.config, model.output_weights(), hidden,
                              batch["decoder_target_tokens"], loss_chunk_len)
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  tokens = jnp.sum(weights > 0)
  loss_sum = jnp.sum(nll_BxL * weights)
  return loss_sum, {"loss_sum": loss_sum, "tokens": tokens}


def make_train_step(graphdef, optimizer: optax.GradientTransformation,
                    state_shardings: state_lib.TrainState, mesh, accum_steps: int = 1,
                    loss_chunk_len: int | None = None) -> Callable:
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and donation.

  With `accum_steps > 1` the global batch is split into that many micro-batches whose gradients
  are summed in a scan before one optimizer update (same result, less activation memory).
  `loss_chunk_len`: the loss computes the output logits that many positions at a time
  (`chunked_token_nll`); None: whole rows.
  """

  def grads_of(params, batch):
    grad_fn = jax.grad(lambda p, b: loss_and_metrics(graphdef, p, b, loss_chunk_len),
                       has_aux=True)
    if accum_steps == 1:
      return grad_fn(params, batch)

    def micro(b):
      return b.reshape((accum_steps, b.shape[0] // accum_steps) + b.shape[1:])

    def body(carry, mb):
      g, m = grad_fn(params, mb)
      return jax.tree.map(jnp.add, carry, (g, m)), None

    zeros = jax.tree.map(jnp.zeros_like, (params, {"loss_sum": jnp.zeros(()),
                                                   "tokens": jnp.zeros((), jnp.int32)}))
    (g, m), _ = jax.lax.scan(body, zeros, jax.tree.map(micro, batch))
    return g, m

  def step(state: state_lib.TrainState, batch):
    grads, m = grads_of(state.params, batch)
    denom = jnp.maximum(m["tokens"], 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": m["loss_sum"] / denom, "tokens": m["tokens"],
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_sh = {k: mesh_lib.batch_sharding(mesh, 2) for k in BATCH_KEYS}
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def run(state, batch):
    batch = {k: batch[k] for k in BATCH_KEYS}
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  def lower(state, batch):
    """This very step lowered for `state`/`batch` (arrays or ShapeDtypeStructs with
    shardings): compile-only checks compile exactly what runs."""
    with jax.set_mesh(mesh):
      return jitted.lower(state, {k: batch[k] for k in BATCH_KEYS})

  run.lower = lower
  return run
