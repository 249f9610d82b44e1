"""The sampler: its forwards against the model, greedy decoding, determinism, sharding, stops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import family_configs, perturb, to_np
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling import forward as sampling_model
from rest_jax.models import init_params
from rest_jax.models import params as params_lib
from rest_jax.sampling.sampler import Completion, Sampler, SamplingParams
from rest_jax.tokenizers import ByteTokenizer

FAMILIES = family_configs()
# float32; logits of the perturbed models reach ~20, so sums in another order differ by ~1e-5.
ATOL = 5e-5
# Small buckets keep the number of compiled programs (and the test time) down.
BUCKETS = dict(prompt_buckets=(32,), cache_buckets=(64,), max_prefill_batch=4)


def _one_device_mesh():
  return mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])


@functools.lru_cache(maxsize=None)
def _model(family="llama", vocab_size=None, seed=1, scale=0.3):
  cfg = FAMILIES[family]
  if vocab_size:
    cfg = cfg.replace(vocab_size=vocab_size)
  graphdef, params = init_params(cfg, _one_device_mesh(), seed=seed)
  return cfg, graphdef, perturb(params, seed=seed, scale=scale)


class _WordTokenizer:
  """Ids decode to 1-3 letter pieces (so text spans token boundaries); id 0 ends a sample."""

  eos_id, pad_id, bos_id = 0, 1, None

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size
    letters = "abcdefghij"
    self.pieces = ["", ""] + [
        "".join(letters[(i * m) % 10] for m in (1, 3, 7)[: 1 + i % 3]) for i in range(2, vocab_size)]

  def encode(self, text):
    raise NotImplementedError

  def decode(self, ids):
    return "".join(self.pieces[i] for i in ids)


@functools.lru_cache(maxsize=None)
def _full_forward(graphdef):
  return jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)[0])


def _greedy_reference(graphdef, params, prompt, n, stop_ids, width=64):
  """Greedy tokens by repeated full forwards (right-padded to `width`: causal, so exact)."""
  ids, out = list(prompt), []
  for _ in range(n):
    padded = np.zeros((1, width), np.int32)
    padded[0, :len(ids)] = ids
    tok = int(jnp.argmax(_full_forward(graphdef)(params, padded)[0, len(ids) - 1]))
    if tok in stop_ids:
      return out, "eos"
    out.append(tok)
    ids.append(tok)
  return out, "length"


# ----------------------------------------------------------------------------- forwards


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_and_decode_step_equal_full_forward(family):
  cfg, graphdef, params = _model(family)
  length = 11  # past gemma3's window of 4: local layers must mask old keys
  # Two prompts (3 and 5 tokens), each continued two different ways by a group of two slots
  # that reads it from one store row.
  lengths = jnp.array([3, 5])
  seqs = jax.random.randint(jax.random.key(3), (4, length), 0, cfg.vocab_size)
  seqs = seqs.at[1, :3].set(seqs[0, :3]).at[3, :5].set(seqs[2, :5])
  full, _ = nnx.merge(graphdef, params)(seqs)
  prompts = jnp.where(jnp.arange(6)[None] < lengths[:, None], seqs[::2, :6], 0)
  logits, store = jax.jit(sampling_model.prefill, static_argnums=(0, 4))(
      graphdef, params, prompts, lengths, jnp.float32)
  np.testing.assert_allclose(to_np(logits), to_np(full[::2][jnp.arange(2), lengths - 1]),
                             atol=ATOL, rtol=0)
  cache = sampling_model.DecodeCache.zeros(cfg, 4, 16, jnp.float32)
  step = jax.jit(sampling_model.decode_step, static_argnums=(0, 7))
  pos, steps = jnp.repeat(lengths, 2), jnp.ones((4,), jnp.int32)
  rows = jnp.arange(4)
  for _ in range(length - 5):
    for window in (None, 8):   # 8: the completion part reads its first 8 entries only
      logits, _ = step(graphdef, params, store, cache, seqs[rows, pos], pos, steps, window)
      np.testing.assert_allclose(to_np(logits), to_np(full[rows, pos]), atol=ATOL, rtol=0)
    _, cache = step(graphdef, params, store, cache, seqs[rows, pos], pos, steps, None)
    pos, steps = pos + 1, steps + 1


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("family,window_quantum,unroll", [
    ("llama", None, 1), ("gemma3", None, 1), ("llama", 16, 1), ("gemma3", None, True)])
def test_greedy_generate_equals_argmax_of_full_forwards(family, window_quantum, unroll):
  cfg, graphdef, params = _model(family)
  tok = _WordTokenizer(cfg.vocab_size)
  sampler = Sampler(graphdef, cfg, tok, _one_device_mesh(), num_slots=4, steps_per_dispatch=3,
                    window_quantum=window_quantum, layer_unroll=unroll, **BUCKETS)
  prompts = [[5, 9, 2], [7] * 13, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
  sampling = SamplingParams(temperature=0.0, max_new_tokens=12)
  out = sampler.generate(params, prompts, num_samples=2, sampling=sampling, seed=0)
  for i, prompt in enumerate(prompts):
    ref, reason = _greedy_reference(graphdef, params, prompt, 12, {tok.eos_id})
    for c in out[i]:
      assert (c.tokens, c.finish_reason) == (ref, reason)
      assert c.text == tok.decode(ref)
      assert c.prompt_index == i and c.logprob_sum <= 0
  # The sum of log-probabilities is that of the raw model.
  if window_quantum:   # short rows ran with attention cut to 16 entries
    assert any(name.startswith("decode") and ", 16," in name for name, _ in sampler.compilations)
  c = out[0][0]
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray([prompts[0] + c.tokens]))
  logp = jax.nn.log_softmax(logits[0])
  ref_sum = sum(float(logp[len(prompts[0]) - 1 + t, c.tokens[t]]) for t in range(len(c.tokens)))
  assert c.logprob_sum == pytest.approx(ref_sum, abs=1e-3)


def test_eos_ends_a_sample_and_is_left_out():
  cfg, graphdef, params = _model()
  tok = _WordTokenizer(cfg.vocab_size)
  prompt = [5, 9, 2]
  ref, _ = _greedy_reference(graphdef, params, prompt, 6, set())
  tok.eos_id = ref[3]  # the 4th greedy token now ends the sample
  sampler = Sampler(graphdef, cfg, tok, _one_device_mesh(), num_slots=2, **BUCKETS)
  (c,), = sampler.generate(params, [prompt], num_samples=1, seed=0,
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=6))
  first = ref.index(tok.eos_id)
  assert (c.tokens, c.finish_reason) == (ref[:first], "eos")


# ----------------------------------------------------------------------------- determinism


@functools.lru_cache(maxsize=None)
def _samplers(slots):
  cfg, graphdef, params = _model()
  return Sampler(graphdef, cfg, _WordTokenizer(cfg.vocab_size), _one_device_mesh(),
                 num_slots=slots, steps_per_dispatch=4, **BUCKETS)


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(2, 128, size=int(rng.integers(1, 30))).tolist() for _ in range(n)]


def _tokens(results):
  return [[(c.tokens, c.finish_reason, round(c.logprob_sum, 3)) for c in r] for r in results]


def test_same_samples_whatever_batch_size_and_slot_count():
  _, _, params = _model()
  prompts = _prompts(16)
  sampling = SamplingParams(temperature=1.0, max_new_tokens=10)
  run = lambda slots, ps, keys: _tokens(_samplers(slots).generate(
      params, ps, num_samples=3, sampling=sampling, seed=7, prompt_keys=keys))
  all_at_once = run(32, prompts, None)
  assert run(4, prompts, None) == all_at_once
  one_by_one = [run(4, [p], [i])[0] for i, p in enumerate(prompts)]
  assert one_by_one == all_at_once
  # Samples differ from each other and from another seed.
  assert len({tuple(t) for r in all_at_once for t, _, _ in r}) > 40
  other = _tokens(_samplers(32).generate(params, prompts, num_samples=3, sampling=sampling,
                                         seed=8))
  assert other != all_at_once


def test_prompt_keys_not_positions_decide_the_draws():
  _, _, params = _model()
  prompts = _prompts(5, seed=1)
  sampling = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=6)
  keys = [101, 7, 2 ** 31 - 1, 55, 3]
  a = _samplers(4).generate(params, prompts, num_samples=2, sampling=sampling, seed=3,
                            prompt_keys=keys)
  order = [3, 0, 4, 1, 2]
  b = _samplers(4).generate(params, [prompts[i] for i in order], num_samples=2,
                            sampling=sampling, seed=3, prompt_keys=[keys[i] for i in order])
  for pos, i in enumerate(order):
    assert _tokens([b[pos]]) == _tokens([a[i]])
    assert all(c.prompt_index == pos for c in b[pos])


def _draws(results):
  return [[(c.tokens, c.text, c.sample_index) for c in r] for r in results]


def test_sample_offsets_continue_the_same_draws():
  _, _, params = _model()
  prompts = _prompts(2, seed=7)
  sampling = SamplingParams(temperature=1.0, max_new_tokens=8)
  gen = lambda n, offsets: _draws(_samplers(4).generate(
      params, prompts, num_samples=n, sampling=sampling, seed=4, prompt_keys=[11, 12],
      sample_offsets=offsets))
  four = gen(4, None)
  assert [[j for _, _, j in r] for r in four] == [[0, 1, 2, 3]] * 2
  assert len({tuple(t) for r in four for t, _, _ in r}) > 4   # distinct draws, not one repeated
  first, second = gen(2, [0, 0]), gen(2, [2, 2])
  assert [a + b for a, b in zip(first, second)] == four
  # Offsets differ per prompt: prompt 0 continues at 1, prompt 1 at 3; result[i][j] positional.
  mixed = gen(1, [1, 3])
  assert mixed == [[four[0][1]], [four[1][3]]]


def test_sample_offsets_are_checked():
  _, _, params = _model()
  run = lambda offsets: _samplers(4).generate(
      params, [[3, 4], [5]], num_samples=2, sampling=SamplingParams(max_new_tokens=2), seed=0,
      sample_offsets=offsets)
  with pytest.raises(ValueError, match=r"1 sample_offsets for 2 prompts"):
    run([0])
  with pytest.raises(ValueError, match=r"sample_offsets\[1\]=-1: expected 0 <= offset"):
    run([0, -1])
  with pytest.raises(ValueError, match=r"sample_offsets\[0\]=4294967295"):
    run([2 ** 32 - 1, 0])


def test_on_prompt_done_reports_every_prompt_once():
  _, _, params = _model()
  prompts = _prompts(6, seed=2)
  seen = []
  out = _samplers(4).generate(
      params, prompts, num_samples=3, seed=0, sampling=SamplingParams(max_new_tokens=8),
      on_prompt_done=lambda i, cs: seen.append((i, [c.sample_index for c in cs])))
  assert sorted(seen) == [(i, [0, 1, 2]) for i in range(6)]
  assert all(isinstance(c, Completion) for r in out for c in r)
  assert [[c.sample_index for c in r] for r in out] == [[0, 1, 2]] * 6


def test_sharded_on_eight_devices_equals_one_device():
  cfg, graphdef, params = _model()
  mesh = mesh_lib.create_mesh((2, 2, 2))
  params8 = jax.device_put(params, params_lib.shardings(mesh, params))
  tok = _WordTokenizer(cfg.vocab_size)
  sampling = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=8)
  prompts = _prompts(6, seed=3)
  s8 = Sampler(graphdef, cfg, tok, mesh, num_slots=8, steps_per_dispatch=4, **BUCKETS)
  out8 = s8.generate(params8, prompts, num_samples=2, sampling=sampling, seed=5)
  s1 = Sampler(graphdef, cfg, tok, _one_device_mesh(), num_slots=8, steps_per_dispatch=4,
               **BUCKETS)
  out1 = s1.generate(params, prompts, num_samples=2, sampling=sampling, seed=5)
  assert _tokens(out8) == _tokens(out1)


# ----------------------------------------------------------------------------- stops, limits


def test_stop_strings_spanning_tokens_stop_and_are_trimmed():
  cfg, graphdef, params = _model()
  tok = _WordTokenizer(cfg.vocab_size)
  sampler = _samplers(4)
  candidates = _prompts(8, seed=6)
  greedy = sampler.generate(params, candidates, num_samples=1, seed=0,
                            sampling=SamplingParams(temperature=0.0, max_new_tokens=20))
  # A prompt whose greedy completion runs to the length limit.
  prompt, (free,) = next((p, r) for p, r in zip(candidates, greedy)
                         if r[0].finish_reason == "length")
  pieces = [tok.pieces[i] for i in free.tokens]
  full = "".join(pieces)
  assert len(full) > len("".join(pieces[:4])) + 1
  # A stop string made of the end of token 3 and the start of token 4.
  edge = len("".join(pieces[:4]))
  stop = full[edge - 1:edge + 1]
  cut = full.find(stop)
  (c,), = sampler.generate(params, [prompt], num_samples=1, seed=0,
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=20,
                                                   stop=("zzzz", stop)))
  assert c.finish_reason == "stop"
  assert c.text == full[:cut] and stop not in c.text
  n = next(k for k in range(len(pieces) + 1) if len("".join(pieces[:k])) >= cut)
  assert c.tokens == free.tokens[:n]
  assert len(c.tokens) < len(free.tokens)


def test_length_limit_and_too_long_prompts():
  cfg, graphdef, params = _model()
  sampler = _samplers(4)
  out = sampler.generate(params, [[3, 4]], num_samples=2, seed=0,
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=1))
  assert [len(c.tokens) for c in out[0]] in ([1, 1], [0, 1], [1, 0], [0, 0])
  assert all(c.finish_reason in ("length", "eos") for c in out[0])
  with pytest.raises(ValueError, match=r"prompt 1 has 60 tokens.*max_new_tokens=10.*70.*64"):
    sampler.generate(params, [[3], [4] * 60], num_samples=1, seed=0,
                     sampling=SamplingParams(max_new_tokens=10))
  truncating = Sampler(graphdef, cfg, sampler.tokenizer, _one_device_mesh(), num_slots=4,
                       truncate_prompts=True, **BUCKETS)
  (a,), = truncating.generate(params, [[4] * 60], num_samples=1, seed=0,
                              sampling=SamplingParams(temperature=0.0, max_new_tokens=10))
  (b,), = truncating.generate(params, [[4] * 54], num_samples=1, seed=0,
                              sampling=SamplingParams(temperature=0.0, max_new_tokens=10))
  assert a.tokens == b.tokens


def test_compiles_a_handful_of_programs_and_reuses_them():
  cfg, graphdef, params = _model()
  sampler = Sampler(graphdef, cfg, _WordTokenizer(cfg.vocab_size), _one_device_mesh(),
                    num_slots=8, steps_per_dispatch=4, **BUCKETS)
  sampling = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=10)
  sampler.generate(params, _prompts(20, seed=4), num_samples=2, sampling=sampling, seed=0)
  first = len(sampler.compilations)
  # 4 zero-fills, prefill per (rows, length) bucket, insert per row-count bucket, one decode.
  assert first <= 16, sampler.compilations
  assert sum(name.startswith("decode") for name, _ in sampler.compilations) == 1
  sampler.generate(params, _prompts(20, seed=5), num_samples=2, sampling=sampling, seed=1)
  assert len(sampler.compilations) <= first + 3   # at most a few new row-count buckets
  assert sampler.stats["kv_cache_bytes"] > 0 and sampler.stats["new_tokens"] > 0


def test_bfloat16_cache_runs():
  cfg, graphdef, params = _model()
  tok = _WordTokenizer(cfg.vocab_size)
  sampler = Sampler(graphdef, cfg, tok, _one_device_mesh(), num_slots=4, cache_dtype="bfloat16",
                    **BUCKETS)
  sampling = SamplingParams(temperature=0.0, max_new_tokens=6)
  (c,), = sampler.generate(params, [[5, 9, 2]], num_samples=1, sampling=sampling, seed=0)
  ref, _ = _greedy_reference(graphdef, params, [5, 9, 2], 6, {tok.eos_id})
  assert c.tokens[:2] == ref[:2]   # bf16 keys may flip a later near-tie
  assert sampler.stats["kv_cache_bytes"] == 2 * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * (
      sampler.stats["slots"] * sampler.stats["cache_len"] + sampler.stats["store_rows"] * sampler.stats["store_len"])


def test_byte_tokenizer_end_to_end():
  cfg, graphdef, params = _model(vocab_size=384)
  tok = ByteTokenizer(384)
  sampler = Sampler(graphdef, cfg, tok, _one_device_mesh(), num_slots=4, **BUCKETS)
  out = sampler.generate(params, [tok.encode("2+2=")], num_samples=2, seed=0,
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=5))
  for c in out[0]:
    assert c.text == tok.decode(c.tokens)
    assert tok.eos_id not in c.tokens
