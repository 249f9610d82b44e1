"""Token draws follow the temperature / top-k / top-p filtered softmax (statistical tests).

Each check is a chi-square goodness-of-fit test at false-alarm rate ALPHA = 1e-3: a correct
sampler fails one of them with probability 1e-3 for a random seed (the seeds here are fixed,
so the tests are deterministic). Tokens outside the filter must never be drawn at all.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from helpers import family_configs, perturb
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling import filters
from rest_jax.models import init_params
from rest_jax.sampling.sampler import Sampler, SamplingParams

ALPHA = 1e-3
LOGITS = np.array([2.0, 1.5, 1.2, 0.9, 0.5, 0.0, -0.3, -1.0, -2.0, -4.0], np.float32)


def expected_probs(logits, temperature, top_k, top_p):
  """The filtered distribution, written out independently of the implementation."""
  x = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-x, kind="stable")
  keep = np.zeros(len(x), bool)
  keep[order[:top_k] if top_k else order] = True
  p = np.where(keep, np.exp(x - x.max()), 0.0)
  p /= p.sum()
  if top_p < 1.0:
    mass_before = np.cumsum(p[order]) - p[order]
    nucleus = order[mass_before < top_p]
    p = np.where(np.isin(np.arange(len(x)), nucleus), p, 0.0)
    p /= p.sum()
  return p


def assert_follows(draws, probs, vocab):
  counts = np.bincount(np.asarray(draws), minlength=vocab)
  assert counts[probs == 0].sum() == 0, f"drew filtered-out tokens: {counts}, {probs}"
  support = probs > 0
  if support.sum() == 1:
    return
  # Categories expecting fewer than 5 draws are pooled into one bin (the usual chi-square rule).
  expected, observed = probs * len(draws), counts.astype(np.float64)
  small = support & (expected < 5)
  big = support & ~small
  expected = np.append(expected[big], expected[small].sum())
  observed = np.append(observed[big], observed[small].sum())
  if expected[-1] == 0:
    expected, observed = expected[:-1], observed[:-1]
  stat = ((observed - expected) ** 2 / expected).sum()
  p_value = stats.chi2.sf(stat, df=len(expected) - 1)
  assert p_value > ALPHA, f"p={p_value:.2e}: counts {counts} vs expected {probs * len(draws)}"


SETTINGS = [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.7), (0.8, 5, 0.8),
            (2.0, 9, 0.95)]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_draw_frequencies_match_filtered_softmax(temperature, top_k, top_p):
  n = 40_000
  spec = filters.FilterSpec.of(temperature, top_k, top_p, len(LOGITS))
  keys = jax.random.split(jax.random.key(hash((temperature, top_k, top_p)) % 2**31), n)
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, len(LOGITS)))
  tok, logp = jax.jit(filters.draw, static_argnums=2)(logits, keys, spec, temperature, top_p)
  probs = expected_probs(LOGITS, temperature, top_k, top_p)
  assert_follows(tok, probs, len(LOGITS))
  np.testing.assert_allclose(np.asarray(filters.filtered_probs(logits[:1], spec, temperature,
                                                                top_p))[0], probs, atol=1e-6)
  raw = jax.nn.log_softmax(jnp.asarray(LOGITS))
  np.testing.assert_allclose(np.asarray(logp), np.asarray(raw[tok]), atol=1e-5)


def test_greedy_takes_the_argmax():
  spec = filters.FilterSpec.of(0.0, 40, 0.9, len(LOGITS))
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, len(LOGITS))), jnp.float32)
  tok, _ = filters.draw(logits, jax.random.split(jax.random.key(0), 64), spec, 1.0, 1.0)
  np.testing.assert_array_equal(np.asarray(tok), np.argmax(np.asarray(logits), -1))


def test_a_row_draws_the_same_token_alone_or_in_a_batch():
  spec = filters.FilterSpec.of(1.0, 0, 0.9, len(LOGITS))
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(32, len(LOGITS))), jnp.float32)
  keys = jax.random.split(jax.random.key(3), 32)
  batch, _ = filters.draw(logits, keys, spec, 1.0, 0.9)
  alone = [int(filters.draw(logits[i:i + 1], keys[i:i + 1], spec, 1.0, 0.9)[0][0])
           for i in range(0, 32, 7)]
  assert alone == [int(t) for t in np.asarray(batch)[::7]]


class _Tok:
  eos_id, pad_id, bos_id, stop_ids = 0, 0, None, (0,)

  def decode(self, ids):
    return " ".join(map(str, ids))


@functools.lru_cache(maxsize=None)
def _tiny():
  cfg = family_configs()["llama"].replace(vocab_size=16)
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  graphdef, params = init_params(cfg, mesh, seed=2)
  return cfg, graphdef, perturb(params, seed=2, scale=0.3), mesh


def test_sampler_first_tokens_follow_the_filtered_model_distribution():
  """End to end: K first tokens of one prompt, drawn by the sampler, on a 16-token vocabulary."""
  cfg, graphdef, params, mesh = _tiny()
  prompt = [3, 7, 1, 12, 5]
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray([prompt]))
  last = np.asarray(logits[0, -1])
  temperature, top_k, top_p = 1.3, 6, 0.9
  sampler = Sampler(graphdef, cfg, _Tok(), mesh, num_slots=128, steps_per_dispatch=1,
                    prompt_buckets=(16,), cache_buckets=(32,))
  k = 1024
  out = sampler.generate(params, [prompt], num_samples=k, seed=11, sampling=SamplingParams(
      temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1))
  first = [c.tokens[0] if c.tokens else 0 for c in out[0]]   # an EOS (id 0) leaves no token
  probs = expected_probs(last, temperature, top_k, top_p)
  assert_follows(first, probs, cfg.vocab_size)
  raw = np.asarray(jax.nn.log_softmax(last))
  for c in out[0][:20]:
    if c.tokens:
      assert c.logprob_sum == pytest.approx(float(raw[c.tokens[0]]), abs=1e-4)
