"""The host side of `Sampler.generate`: which (prompt, sample) pair goes into which slot.

`Run` keeps the queue of pending pairs (prompt-major), prefills each prompt once into the
prompt store, inserts pairs into free slots, dispatches decode steps, appends the tokens they
return, checks EOS and stop strings on the host, and hands finished completions back. The device
programs it calls (`_prefill`, `_insert`, `_decode`) belong to `rest_jax.sampling.sampler.Sampler`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

MAX_STOP_IDS = 8


@dataclasses.dataclass
class Completion:
  prompt_index: int     # position of the prompt in the input list
  sample_index: int     # the index folded into its key: offset + j (j in 0..K-1)
  tokens: list[int]     # generated ids, without the EOS id; cut at a stop string (see `rest_jax.sampling.sampler`)
  text: str             # decoded `tokens`, cut exactly before a stop string
  finish_reason: str    # 'eos' | 'stop' | 'length'
  logprob_sum: float    # sum of raw model log-probabilities (temperature 1, unfiltered) of tokens


def bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f"{n} is above the largest bucket {max(buckets)}")


def pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass
class _Slot:
  prompt: int
  sample: int
  tokens: list
  logprobs: list
  checked_text: int = 0   # text length already searched for stop strings


class Run:
  """One `Sampler.generate` call (`sampler` is that Sampler; the scheduler does not import it,
  so the dependency runs one way).

  Slots come in `rows` groups of `g`; group r decodes the prompt in row r of the prompt store.
  A free slot takes its group's prompt's next sample; a group whose prompt has no sample left
  to start, and none decoding, takes the next prompt (prefilled into its row)."""

  def __init__(self, sampler, params, prompts, prompt_keys, num_samples, sampling,
               spec, seed, progress, on_prompt_done, sample_offsets=None):
    self.s, self.params, self.prompts, self.pkeys = sampler, params, prompts, prompt_keys
    # Sample j of prompt p draws with index offsets[p] + j; results stay positional (j).
    self.offsets = list(sample_offsets) if sample_offsets is not None else [0] * len(prompts)
    self.k, self.sampling, self.spec, self.on_prompt_done = num_samples, sampling, spec, on_prompt_done
    self.seed = np.uint32(int(seed) % (1 << 32))
    self.progress = progress
    s = sampler
    # A slot's cache holds its completion: the tokens fed back, at most max_new_tokens - 1.
    need = sampling.max_new_tokens
    self.cache_len = max(need, min(bucket(need, s.cache_buckets + (need,)), s.max_cache_len))
    self.prompt_len = lambda n: max(n, min(bucket(n, s.prompt_buckets + (n,)),
                                           s.max_cache_len - need))
    self.store_len = max(self.prompt_len(len(p)) for p in prompts)
    self.rows, self.g = s.groups(num_samples, len(prompts))
    self.slots = self.rows * self.g
    self.stop_ids = np.full((MAX_STOP_IDS,), -1, np.int32)
    self.stop_ids[:len(s.stop_ids)] = s.stop_ids
    self.stop_set = set(s.stop_ids)
    self.dyn = (np.float32(max(sampling.temperature, 1e-6)), np.float32(sampling.top_p),
                self.stop_ids, np.int32(sampling.max_new_tokens))

  def _window(self, slots: list) -> int | None:
    q = self.s.window_quantum
    if not q:
      return None
    top = max(len(sl.tokens) for sl in slots if sl is not None)
    w = -(-(top + self.s.steps_per_dispatch) // q) * q
    return None if w >= self.cache_len else w

  def run(self) -> list[list[Completion]]:
    s, cfg = self.s, self.s.config
    S, K, g = self.slots, self.k, self.g
    t_start = time.perf_counter()
    compiles_before = len(s.compilations)
    cache = s.zeros_cache(S, self.cache_len)
    store = s.zeros_cache(self.rows, self.store_len)
    logits_shape = (self.rows, cfg.vocab_size)
    store_logits = s._zeros(f"zeros_logits{logits_shape}",
                            lambda: jnp.zeros(logits_shape, jnp.float32),
                            s._sharding(("batch", "vocab"), logits_shape))
    state = s._empty_state(S)
    self.kv_bytes = cache.nbytes + store.nbytes

    slots: list[_Slot | None] = [None] * S
    row_prompt: list[int | None] = [None] * self.rows   # the prompt each group decodes
    started = [0] * len(self.prompts)                   # samples of each prompt started
    next_prompt = 0
    self.results = [[None] * K for _ in self.prompts]
    self.finished = [0] * len(self.prompts)
    self.new_tokens = 0
    dispatches = 0
    desc = self.progress if isinstance(self.progress, str) else "sample"
    self.bar = tqdm(total=len(self.prompts) * K, desc=desc, unit="sample",
                    disable=not self.progress, leave=False, dynamic_ncols=True)
    try:
      while True:
        # Groups with nothing left of their prompt take the next prompts.
        new = {}   # prompt -> its row
        for r in range(self.rows):
          p = row_prompt[r]
          idle = all(sl is None for sl in slots[r * g:(r + 1) * g])
          if idle and (p is None or started[p] == K):
            row_prompt[r] = None
            if next_prompt < len(self.prompts):
              row_prompt[r] = next_prompt
              new[next_prompt] = r
              next_prompt += 1
        store, store_logits = self._prefill_prompts(new, store, store_logits)
        assigned = []   # (slot, (prompt, sample)) started this round
        for r, p in enumerate(row_prompt):
          for slot in range(r * g, (r + 1) * g):
            if p is not None and slots[slot] is None and started[p] < K:
              assigned.append((slot, (p, started[p])))
              started[p] += 1
        inserted_now = None   # (slot assignments, their first tokens) of this round
        if assigned:
          state, firsts = self._insert_pairs(assigned, state, store_logits)
          for slot, (p, j) in assigned:
            slots[slot] = _Slot(p, j, [], [])
          inserted_now = (assigned, firsts)
        if inserted_now is None and all(sl is None for sl in slots):
          break
        window = self._window(slots) if any(slots) else None
        cache, state, toks, logps, valid = s._decode(self.params, store, cache, state,
                                                     self.dyn, self.spec, window)
        dispatches += 1
        # The first tokens (drawn at insertion) come before this dispatch's tokens.
        if inserted_now is not None:
          assigned, (tok0, logp0) = inserted_now
          tok0, logp0 = np.asarray(tok0), np.asarray(logp0)
          for i, (slot, _) in enumerate(assigned):
            self._append(slots, slot, [int(tok0[i])], [float(logp0[i])])
        toks, logps, valid = np.asarray(toks), np.asarray(logps), np.asarray(valid)
        for slot in range(S):
          if slots[slot] is not None and valid[slot].any():
            n = int(valid[slot].sum())   # valid steps are a prefix of the dispatch
            self._append(slots, slot, toks[slot, :n].tolist(), logps[slot, :n].tolist())
        elapsed = time.perf_counter() - t_start
        self.bar.set_postfix_str(f"{self.new_tokens / max(elapsed, 1e-9):.1f} tok/s",
                                 refresh=False)
    finally:
      self.bar.close()
    assert all(c is not None for r in self.results for c in r)
    elapsed = time.perf_counter() - t_start
    s.stats = {"seconds": elapsed, "new_tokens": self.new_tokens,
               "tokens_per_s": self.new_tokens / max(elapsed, 1e-9), "dispatches": dispatches,
               "cache_len": self.cache_len, "store_len": self.store_len,
               "store_rows": self.rows, "group_size": g, "slots": S,
               "kv_cache_bytes": self.kv_bytes,
               "compilations": len(s.compilations) - compiles_before}
    return self.results

  def _prefill_prompts(self, row_of: dict, store, store_logits):
    """Prefills prompts (index -> store row), batched by length bucket."""
    s = self.s
    by_len = collections.defaultdict(list)
    for p in row_of:
      by_len[self.prompt_len(len(self.prompts[p]))].append(p)
    for t, group in sorted(by_len.items()):
      for i in range(0, len(group), s.max_prefill_batch):
        chunk = group[i:i + s.max_prefill_batch]
        n = pow2(len(chunk))
        tokens = np.full((n, t), s.tokenizer.pad_id, np.int32)
        lengths = np.ones((n,), np.int32)
        rows = np.full((n,), self.rows, np.int32)   # out of range: dropped
        for r, p in enumerate(chunk):
          ids = self.prompts[p]
          tokens[r, :len(ids)] = ids
          lengths[r] = len(ids)
          rows[r] = row_of[p]
        store, store_logits = s._prefill(self.params, store, store_logits, tokens, lengths, rows)
    return store, store_logits

  def _insert_pairs(self, assigned, state, store_logits):
    s = self.s
    n = min(pow2(len(assigned)), pow2(self.slots))
    slots = np.full((n,), self.slots, np.int32)   # out of range: dropped
    rows = np.zeros((n,), np.int32)
    pkeys = np.zeros((n,), np.uint32)
    samples = np.zeros((n,), np.uint32)
    lengths = np.zeros((n,), np.int32)
    for i, (slot, (p, j)) in enumerate(assigned):
      slots[i], rows[i], pkeys[i], samples[i] = slot, slot // self.g, self.pkeys[p], self.offsets[p] + j
      lengths[i] = len(self.prompts[p])
    state, tok, logp = s._insert(state, store_logits, slots, rows, pkeys, samples, lengths,
                                 self.seed, self.dyn, self.spec)
    return state, (tok, logp)

  def _append(self, slots, slot, toks, logps):
    sl = slots[slot]
    sl.tokens.extend(toks)
    sl.logprobs.extend(logps)
    self.new_tokens += len(toks)
    done = self._finished(sl)
    if done is not None:
      slots[slot] = None
      self._complete(sl, *done)

  def _finished(self, sl: _Slot):
    """(reason, n_tokens, text) if the sample ended, else None."""
    toks = sl.tokens
    eos = bool(toks) and toks[-1] in self.stop_set
    body = toks[:-1] if eos else toks
    stops = self.sampling.stop
    if stops:
      dec = self.s.tokenizer.decode
      text = dec(body)
      start = max(0, sl.checked_text - max(len(x) for x in stops) - 8)
      hits = [i for i in (text.find(x, start) for x in stops) if i >= 0]
      sl.checked_text = len(text)
      if hits:
        cut = min(hits)
        n = next((k for k in range(len(body) + 1) if len(dec(body[:k])) >= cut), len(body))
        return "stop", n, text[:cut]
    if eos:
      return "eos", len(body), None
    if len(toks) >= self.sampling.max_new_tokens:
      return "length", len(toks), None
    return None

  def _complete(self, sl: _Slot, reason: str, n: int, text: str | None):
    toks = [int(t) for t in sl.tokens[:n]]
    if text is None:
      text = self.s.tokenizer.decode(toks)
    c = Completion(sl.prompt, self.offsets[sl.prompt] + sl.sample, toks, text, reason,
                   float(math.fsum(sl.logprobs[:n])))
    self.results[sl.prompt][sl.sample] = c
    self.finished[sl.prompt] += 1
    self.bar.update(1)
    if self.finished[sl.prompt] == self.k and self.on_prompt_done is not None:
      self.on_prompt_done(sl.prompt, self.results[sl.prompt])
