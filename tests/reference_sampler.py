"""A plain sampler to hold the shared-prompt sampler against: every sample decodes with the
model's own KV cache (`Transformer.__call__`, one cache row per sample holding its prompt and
its completion, one softmax over it), the prompt prefilled per prompt and copied into each
sample's row. The same keys and the same `filters.draw` as `Sampler`, so draws may differ only
where float sums in another order move a uniform across a CDF boundary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rest_jax.models.transformer import KVCache
from rest_jax.sampling import filters


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
  return jax.jit(lambda p, t, pos, c: nnx.merge(graphdef, p)(t, pos, cache=c))


@functools.lru_cache(maxsize=None)
def _draw(spec):
  return jax.jit(lambda logits, keys, temperature, top_p: filters.draw(
      logits, keys, spec, temperature, top_p))


def generate(graphdef, params, cfg, prompts, *, num_samples, temperature, top_k, max_new_tokens,
             seed, prompt_keys, stop_ids, width):
  """[(tokens without the ending stop id, sum of their raw log-probabilities)] per sample,
  prompt-major. Prompts are right-padded to `width` (causal: padding never reaches a query)."""
  spec = filters.FilterSpec.of(temperature, top_k, 1.0, cfg.vocab_size)
  draw = _draw(spec)
  fwd = _forward(graphdef)
  k = num_samples
  out = []
  for prompt, pkey in zip(prompts, prompt_keys):
    n = len(prompt)
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :n] = prompt
    cache = KVCache.zeros(cfg, 1, width + max_new_tokens, jnp.float32)
    logits, cache = fwd(params, tokens, np.arange(width, dtype=np.int32)[None], cache)
    cache = jax.tree.map(lambda c: jnp.repeat(c, k, axis=1), cache)
    logits = jnp.repeat(logits[:, n - 1], k, axis=0)
    base = jax.random.key(seed)
    keys = [jax.random.fold_in(jax.random.fold_in(base, pkey), j) for j in range(k)]
    rows = [([], []) for _ in range(k)]
    done = np.zeros(k, bool)
    for t in range(max_new_tokens):
      step_keys = jnp.stack([jax.random.fold_in(kj, t) for kj in keys])
      tok, logp = draw(logits, step_keys, np.float32(max(temperature, 1e-6)), np.float32(1.0))
      tok, logp = np.asarray(tok), np.asarray(logp)
      for j in range(k):
        if not done[j]:
          if int(tok[j]) in stop_ids:
            done[j] = True
          else:
            rows[j][0].append(int(tok[j]))
            rows[j][1].append(float(logp[j]))
      if done.all() or t == max_new_tokens - 1:
        break
      pos = np.full((k, 1), n + t, np.int32)
      logits, cache = fwd(params, tok[:, None].astype(np.int32), pos, cache)
      logits = logits[:, 0]
    out += [(toks, float(np.sum(np.asarray(lps, np.float64)))) for toks, lps in rows]
  return out
