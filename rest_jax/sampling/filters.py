"""Drawing the next token: greedy, temperature, top-k and top-p, one uniform per row.

A row's draw depends only on its own logits and its own key, never on the other rows of the
batch, so a sample comes out the same whatever batch or slot it runs in.

The token is drawn by inverting the CDF of the filtered distribution with one uniform number
per row (not Gumbel-max over the vocabulary), so a step costs one random number per row
however large the vocabulary is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FilterSpec:
  """The static part of a sampling setting: what gets compiled.

  `temperature` and `top_p` values are runtime inputs; whether they are used is static.
  """

  greedy: bool = False
  top_k: int = 0        # 0: off
  use_top_p: bool = False

  @classmethod
  def of(cls, temperature: float, top_k: int, top_p: float, vocab_size: int) -> "FilterSpec":
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0.0:
      return cls(greedy=True)
    top_k = 0 if top_k >= vocab_size else top_k
    return cls(greedy=False, top_k=top_k, use_top_p=top_p < 1.0)


def filtered_candidates(logits_BxV, spec: FilterSpec, temperature, top_p):
  """(candidate log-weights [B, C], their token ids [B, C] or None for the whole vocabulary).

  Candidates outside the filter get -inf. Order: temperature, then top-k, then top-p over
  what top-k kept (the order of Hugging Face's warpers).
  """
  x = logits_BxV.astype(jnp.float32) / temperature
  ids = None
  if spec.top_k > 0:
    x, ids = jax.lax.top_k(x, spec.top_k)          # sorted, largest first
  elif spec.use_top_p:
    x, ids = jax.lax.top_k(x, x.shape[-1])         # a full descending sort
  if spec.use_top_p:
    probs = jax.nn.softmax(x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs    # mass of the strictly more likely tokens
    x = jnp.where(before < top_p, x, -jnp.inf)     # the smallest set reaching top_p
  return x, ids


def filtered_probs(logits_BxV, spec: FilterSpec, temperature=1.0, top_p=1.0):
  """[B, V] probabilities of the distribution a draw follows (tests and diagnostics)."""
  if spec.greedy:
    return jax.nn.one_hot(jnp.argmax(logits_BxV, -1), logits_BxV.shape[-1])
  x, ids = filtered_candidates(logits_BxV, spec, temperature, top_p)
  p = jax.nn.softmax(x, axis=-1)
  if ids is None:
    return p
  return jnp.zeros(logits_BxV.shape, p.dtype).at[jnp.arange(p.shape[0])[:, None], ids].set(p)


def draw(logits_BxV, keys_B, spec: FilterSpec, temperature, top_p):
  """(token ids [B] int32, raw model log-probabilities of them [B] float32).

  `keys_B` are typed PRNG keys, one per row. The log-probability is that of the unfiltered
  model at temperature 1 (`log_softmax(logits)`), whatever the filter.
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  if spec.greedy:
    tok = jnp.argmax(logits_BxV, axis=-1)
  else:
    x, ids = filtered_candidates(logits_BxV, spec, temperature, top_p)
    w = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    cdf = jnp.cumsum(w, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys_B)
    # The first candidate whose CDF exceeds u * total; zero-weight candidates are never it.
    choice = jnp.sum(cdf < (u * cdf[:, -1])[:, None], axis=-1)
    choice = jnp.minimum(choice, x.shape[-1] - 1)
    tok = choice if ids is None else jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
  tok = tok.astype(jnp.int32)
  lse = jax.nn.logsumexp(logits_BxV, axis=-1)
  logp = jnp.take_along_axis(logits_BxV, tok[:, None], axis=-1)[:, 0] - lse
  return tok, logp
