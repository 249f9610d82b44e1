"""A plain continuous-batching sampler over the model's own KV-cache forward.

Each prompt is prefilled once and its cache row copied into the slots of its K samples;
slots are refilled as samples finish; decode runs `steps_per_dispatch` steps per jitted call.
Sample j of prompt p draws step t from fold_in(fold_in(fold_in(key(seed), p), j), t).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from rest_jax.models.transformer import KVCache

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 1.0   # 0: greedy
  top_k: int = 0             # 0: off
  top_p: float = 1.0
  max_new_tokens: int = 256
  stop: tuple[str, ...] = ()


@dataclasses.dataclass
class Completion:
  prompt_index: int
  sample_index: int
  tokens: list[int]          # generated ids, without the EOS/stop token that ended them
  text: str                  # decoded, cut before a stop string
  finish_reason: str         # 'eos' | 'stop' | 'length'
  logprob_sum: float         # raw model log-probabilities of `tokens`


def _bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return int(2 ** np.ceil(np.log2(n)))


def filter_logits(logits_BxV, temperature, top_k: int, top_p: float):
  """Temperature, then top-k, then top-p (nucleus) masking of [B, V] float32 logits."""
  logits = logits_BxV / jnp.maximum(temperature, 1e-6)
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


class Sampler:

  def __init__(self, graphdef, config, tokenizer, mesh, *, num_slots: int = 32,
               max_cache_len: int | None = None, steps_per_dispatch: int = 8,
               cache_dtype: str = "float32",
               prompt_buckets: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048, 4096)):
    self.graphdef, self.config, self.tokenizer, self.mesh = graphdef, config, tokenizer, mesh
    self.num_slots = num_slots
    self.max_cache_len = max_cache_len
    self.steps = steps_per_dispatch
    self.cache_dtype = jnp.dtype(cache_dtype)
    self.prompt_buckets = tuple(prompt_buckets)
    self.stop_ids = set(getattr(tokenizer, "stop_ids", None) or [tokenizer.eos_id])
    self._fns: dict = {}

  # --- jitted pieces --------------------------------------------------------------------

  def _prefill_fn(self):
    if "prefill" not in self._fns:
      def prefill(params, tokens_1xL, length, cache):
        model = nnx.merge(self.graphdef, params)
        positions = jnp.arange(tokens_1xL.shape[1])[None]
        logits, cache = model(tokens_1xL, positions, cache=cache)
        return logits[0, length - 1], cache
      self._fns["prefill"] = jax.jit(prefill, donate_argnums=(3,))
    return self._fns["prefill"]

  def _insert_fn(self):
    if "insert" not in self._fns:
      def insert(cache, row, slot):
        upd = lambda c, r: jax.lax.dynamic_update_slice_in_dim(c, r, slot, axis=1)
        return KVCache(upd(cache.k, row.k), upd(cache.v, row.v))
      self._fns["insert"] = jax.jit(insert, donate_argnums=(0,))
    return self._fns["insert"]

  def _sample_fn(self, sampling: SamplingParams):
    key = ("sample", sampling.temperature, sampling.top_k, sampling.top_p)
    if key not in self._fns:
      def sample(logits_BxV, keys_B):
        logp = jax.nn.log_softmax(logits_BxV, axis=-1)
        if sampling.temperature == 0.0:
          tok = jnp.argmax(logits_BxV, axis=-1)
        else:
          filtered = filter_logits(logits_BxV, sampling.temperature, sampling.top_k,
                                   sampling.top_p)
          tok = jax.vmap(jax.random.categorical)(keys_B, filtered)
        return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
      self._fns[key] = sample
    return self._fns[key]

  def _decode_fn(self, sampling: SamplingParams):
    key = ("decode", sampling.temperature, sampling.top_k, sampling.top_p)
    if key not in self._fns:
      sample = self._sample_fn(sampling)

      def decode(params, cache, tokens_B, positions_B, keys_B, steps_B):
        model = nnx.merge(self.graphdef, params)
        limit = cache.length - 1

        def body(carry, _):
          cache, tok, pos, steps = carry
          logits, cache = model(tok[:, None], jnp.minimum(pos, limit)[:, None], cache=cache)
          step_keys = jax.vmap(jax.random.fold_in)(keys_B, steps)
          nxt, lp = sample(logits[:, 0], step_keys)
          return (cache, nxt, pos + 1, steps + 1), (nxt, lp)

        (cache, tok, pos, steps), (toks, lps) = jax.lax.scan(
            body, (cache, tokens_B, positions_B, steps_B), None, length=self.steps)
        return cache, toks.T, lps.T

      self._fns[key] = jax.jit(decode, donate_argnums=(1,))
    return self._fns[key]

  def _first_token_fn(self, sampling):
    key = ("first", sampling.temperature, sampling.top_k, sampling.top_p)
    if key not in self._fns:
      self._fns[key] = jax.jit(self._sample_fn(sampling))
    return self._fns[key]

  # --- host scheduler -------------------------------------------------------------------

  def generate(self, params, prompts: Sequence[Sequence[int]], *, num_samples: int,
               sampling: SamplingParams, seed: int, prompt_keys: Sequence[int] | None = None,
               progress: bool | str = False,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None
               ) -> list[list[Completion]]:
    if not prompts:
      return []
    keys = list(range(len(prompts))) if prompt_keys is None else list(prompt_keys)
    longest = max(len(p) for p in prompts)
    cache_len = self.max_cache_len or _bucket(longest + sampling.max_new_tokens + self.steps,
                                              self.prompt_buckets)
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError(f"prompt {i} is empty")
      if len(p) + sampling.max_new_tokens > cache_len:
        raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens="
                         f"{sampling.max_new_tokens} it needs a cache of "
                         f"{len(p) + sampling.max_new_tokens}, more than {cache_len}")
    base = jax.random.key(seed)
    with jax.set_mesh(self.mesh):
      return self._generate(params, prompts, keys, base, num_samples, sampling, cache_len,
                            progress, on_prompt_done)

  def _generate(self, params, prompts, keys, base, num_samples, sampling, cache_len, progress,
                on_prompt_done):
    cfg = self.config
    S = self.num_slots
    cache = KVCache.zeros(cfg, S, cache_len, self.cache_dtype)
    prefill, insert = self._prefill_fn(), self._insert_fn()
    first, decode = self._first_token_fn(sampling), self._decode_fn(sampling)
    pending = collections.deque((p, j) for p in range(len(prompts)) for j in range(num_samples))
    results: dict[int, list] = {p: [None] * num_samples for p in range(len(prompts))}
    remaining = {p: num_samples for p in range(len(prompts))}
    prefix: dict[int, tuple] = {}   # prompt -> (cache row, last logits), while samples wait
    slot_of = [None] * S            # (p, j, tokens, logprobs) per slot
    tokens_B = np.zeros(S, np.int32)
    pos_B = np.zeros(S, np.int32)
    steps_B = np.zeros(S, np.int32)
    keys_B = jax.random.split(base, S)  # placeholders for idle slots
    keys_B = np.array(jax.random.key_data(keys_B))
    bar = tqdm(total=len(prompts) * num_samples, desc=progress if isinstance(progress, str)
               else "sample", unit="sample", disable=not progress, leave=False)
    new_tokens = 0

    def sample_key(p, j):
      return jax.random.fold_in(jax.random.fold_in(base, keys[p]), j)

    def finish(slot, reason, toks, lps, text=None):
      nonlocal cache
      p, j = slot_of[slot][0], slot_of[slot][1]
      text = self.tokenizer.decode(toks) if text is None else text
      results[p][j] = Completion(p, j, list(map(int, toks)), text, reason, float(sum(lps)))
      slot_of[slot] = None
      remaining[p] -= 1
      bar.update(1)
      if remaining[p] == 0:
        prefix.pop(p, None)
        if on_prompt_done:
          on_prompt_done(p, results[p])

    def check(slot) -> bool:
      """Finishes the slot's sample if it ended; True when it did."""
      _, _, toks, lps = slot_of[slot]
      for n, t in enumerate(toks):
        if t in self.stop_ids:
          finish(slot, "eos", toks[:n], lps[:n])
          return True
      if sampling.stop:
        text = self.tokenizer.decode(toks)
        hits = [text.find(s) for s in sampling.stop if s in text]
        if hits:
          cut = min(hits)
          # Keep the tokens whose text lies before the stop string.
          n = next((k for k in range(len(toks) + 1)
                    if len(self.tokenizer.decode(toks[:k])) >= cut), len(toks))
          finish(slot, "stop", toks[:n], lps[:n], text[:cut])
          return True
      if len(toks) >= sampling.max_new_tokens:
        finish(slot, "length", toks[:sampling.max_new_tokens],
               lps[:sampling.max_new_tokens])
        return True
      return False

    while pending or any(s is not None for s in slot_of):
      for slot in range(S):
        while slot_of[slot] is None and pending:
          p, j = pending.popleft()
          if p not in prefix:
            length = len(prompts[p])
            padded = np.full((1, _bucket(length, self.prompt_buckets)), self.tokenizer.pad_id,
                             np.int32)
            padded[0, :length] = prompts[p]
            row = KVCache.zeros(cfg, 1, cache_len, self.cache_dtype)
            logits, row = prefill(params, padded, length, row)
            prefix[p] = (row, logits)
          row, logits = prefix[p]
          cache = insert(cache, row, slot)
          k = sample_key(p, j)
          tok, lp = first(logits[None], jax.random.fold_in(k, 0)[None])
          slot_of[slot] = (p, j, [int(tok[0])], [float(lp[0])])
          tokens_B[slot], pos_B[slot], steps_B[slot] = int(tok[0]), len(prompts[p]), 1
          keys_B[slot] = np.asarray(jax.random.key_data(k))
          check(slot)
      if not any(s is not None for s in slot_of):
        continue
      cache, toks, lps = decode(params, cache, tokens_B, pos_B,
                                jax.random.wrap_key_data(keys_B), steps_B)
      toks, lps = np.asarray(toks), np.asarray(lps)
      for slot in range(S):
        if slot_of[slot] is None:
          continue
        slot_of[slot][2].extend(int(t) for t in toks[slot])
        slot_of[slot][3].extend(float(x) for x in lps[slot])
        new_tokens += self.steps
        tokens_B[slot] = toks[slot, -1]
        pos_B[slot] += self.steps
        steps_B[slot] += self.steps
        check(slot)
    bar.close()
    return [results[p] for p in range(len(prompts))]
