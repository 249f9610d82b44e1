import jax
import numpy as np
import pytest

from helpers import to_np
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.training import state as state_lib
from rest_jax.training import step as training
from rest_jax.models import PRESETS, init_params
from rest_jax.models import params as params_lib

CFG = PRESETS["tiny"].replace(num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                              head_dim=16, mlp_dim=128)


def _batch(seed=0, batch=8, length=16):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 256, (batch, length + 1)).astype(np.int32)
  weights = np.zeros((batch, length), np.float32)
  weights[:, length // 2:] = 1.0  # loss on the "completion" half only
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": weights,
          "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
          "decoder_segment_ids": np.ones((batch, length), np.int32)}


def _one_step(mesh, params, accum_steps=1, batch=None, loss_chunk_len=None):
  # Adam's first step is about lr * sign(grad): reduction-order noise on near-zero gradients
  # can move a param by up to 2 * lr, so lr is kept small enough for the stated tolerance.
  opt = training.make_optimizer(learning_rate=1e-4, total_steps=10)
  params = jax.device_put(params, params_lib.shardings(mesh, params))
  state = state_lib.create_state(mesh, params, opt)
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, params, opt),
                                  mesh, accum_steps=accum_steps, loss_chunk_len=loss_chunk_len)
  return step(state, batch or _batch())


graphdef, PARAMS = init_params(CFG, mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1]))
TOL = 2e-5  # float32, highest precision: reduction order only.


def test_sharded_step_equals_single_device():
  one = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  s1, m1 = _one_step(one, PARAMS)
  s8, m8 = _one_step(mesh_lib.create_mesh((2, 2, 2)), PARAMS)
  assert int(s8.step) == 1
  np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(to_np(a), to_np(b), atol=TOL, rtol=0)
  # The step changed the params, and kept their shardings.
  assert not np.allclose(to_np(jax.tree.leaves(s1.params)[0]), to_np(jax.tree.leaves(PARAMS)[0]))
  want = params_lib.shardings(mesh_lib.create_mesh((2, 2, 2)), PARAMS)
  for arr, sh in zip(jax.tree.leaves(s8.params), jax.tree.leaves(want)):
    assert arr.sharding.is_equivalent_to(sh, arr.ndim)


def test_gradient_accumulation_matches_one_big_batch():
  mesh = mesh_lib.create_mesh((1, -1, 1))
  s1, m1 = _one_step(mesh, PARAMS, accum_steps=1)
  s4, m4 = _one_step(mesh, PARAMS, accum_steps=4)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s4.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(to_np(a), to_np(b), atol=TOL, rtol=0)


def test_loss_counts_only_weighted_tokens():
  batch = _batch()
  _, m = _one_step(mesh_lib.create_mesh((1, -1, 1)), PARAMS, batch=batch)
  assert int(m["tokens"]) == int((batch["decoder_loss_weights"] > 0).sum())
  changed = dict(batch)
  tgt = batch["decoder_target_tokens"].copy()
  tgt[:, :8] = (tgt[:, :8] + 1) % 256  # change targets where the weight is 0
  changed["decoder_target_tokens"] = tgt
  _, m2 = _one_step(mesh_lib.create_mesh((1, -1, 1)), PARAMS, batch=changed)
  assert float(m2["loss"]) == pytest.approx(float(m["loss"]), rel=1e-6)


def test_optimizer_schedule_warmup_and_decay_errors():
  with pytest.raises(ValueError, match="decay"):
    training.make_optimizer(decay="exponential")
  opt = training.make_optimizer(learning_rate=1.0, warmup_steps=4, total_steps=10,
                                clip_norm=None, weight_decay=0.0)
  # The update size of plain Adam follows the schedule: 0 at step 0, peak after warmup.
  params = {"w": np.ones(3, np.float32)}
  state = opt.init(params)
  sizes = []
  for _ in range(10):
    updates, state = opt.update({"w": np.ones(3, np.float32)}, state, params)
    sizes.append(float(abs(updates["w"][0])))
  assert sizes[0] == 0.0 and sizes[4] == pytest.approx(1.0, rel=1e-3)
  assert sizes[9] < sizes[5] < sizes[4]


def test_token_nll_and_its_gradient_match_log_softmax():
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(2, 5, 11)) * 30).astype(np.float32)   # large: tests stability
  targets = rng.integers(0, 11, (2, 5)).astype(np.int32)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(training.token_nll(logits, targets), want, rtol=1e-5, atol=1e-5)
  # d(sum nll)/d logits = softmax - onehot
  grad = jax.grad(lambda x: training.token_nll(x, targets).sum())(logits)
  want_grad = np.exp(logp) - np.eye(11, dtype=np.float32)[targets]
  np.testing.assert_allclose(grad, want_grad, atol=1e-5)


@pytest.mark.parametrize("tied,softcap", [(True, None), (False, 30.0)])
def test_the_chunked_loss_and_its_gradients_equal_whole_rows(tied, softcap):
  """Logits 4 positions at a time (13 = 3 chunks + padding): the same NLL, and the same
  gradients into the hidden states and the output projection, as the logits of whole rows."""
  from rest_jax.models import transformer
  cfg = CFG.replace(tie_embeddings=tied, final_logit_softcap=softcap)
  rng = np.random.default_rng(4)
  hidden = rng.normal(size=(3, 13, cfg.embed_dim)).astype(np.float32)
  weights = rng.normal(size=(cfg.vocab_size, cfg.embed_dim) if tied
                       else (cfg.embed_dim, cfg.vocab_size)).astype(np.float32)
  targets = rng.integers(0, cfg.vocab_size, (3, 13)).astype(np.int32)
  scale = rng.normal(size=(3, 13)).astype(np.float32)   # a weighted sum, as the loss is

  def loss(chunk):
    return lambda h, w: (training.chunked_token_nll(cfg, w, h, targets, chunk) * scale).sum()

  whole = lambda h, w: (training.token_nll(transformer.output_logits(cfg, w, h), targets)
                        * scale).sum()
  assert training.chunked_token_nll(cfg, weights, hidden, targets, 4).shape == (3, 13)
  np.testing.assert_allclose(loss(4)(hidden, weights), whole(hidden, weights), rtol=1e-5)
  got = jax.grad(loss(4), argnums=(0, 1))(hidden, weights)
  want = jax.grad(whole, argnums=(0, 1))(hidden, weights)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
  # No logits of more than one chunk in the compiled gradient: [3, 13, V] never appears.
  hlo = jax.jit(jax.grad(loss(4), argnums=(0, 1))).lower(hidden, weights).as_text()
  assert f"3x13x{cfg.vocab_size}" not in hlo and f"3x16x{cfg.vocab_size}" not in hlo
  assert f"3x4x{cfg.vocab_size}" in hlo


def test_a_train_step_with_the_chunked_loss_equals_whole_rows():
  mesh = mesh_lib.create_mesh((1, -1, 1))
  s1, m1 = _one_step(mesh, PARAMS)
  s4, m4 = _one_step(mesh, PARAMS, loss_chunk_len=4)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s4.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(to_np(a), to_np(b), atol=TOL, rtol=0)


def test_a_gin_scope_gives_a_phase_its_own_optimizer(tmp_path):
  """`base_sft/make_optimizer.*` (how the loop makes a tiny base) reaches only the phase run
  under that scope, although both phases have the same length and share the step cache."""
  import gin
  from rest_jax.tasks.kept import SFTExample
  from rest_jax.tokenizers import ByteTokenizer
  from rest_jax.training import improve
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  examples = [SFTExample(prompt=f"{i} + 1 =", completion=f" {i + 1}") for i in range(8)]
  cfg = improve.ImproveConfig(steps=2, batch_size=2, seq_len=32)
  gin.parse_config(["make_optimizer.learning_rate = 1e-2",
                    "base_sft/make_optimizer.learning_rate = 1e-9"])
  try:
    def run(name):
      params, _ = improve.improve(name=name, graphdef=graphdef, init_params=PARAMS,
                                  examples=examples, tokenizer=ByteTokenizer(384), mesh=mesh,
                                  checkpoint_dir=tmp_path / name, seed=0, cfg=cfg)
      return params
    with gin.config_scope("base_sft"):
      frozen = run("scoped")
    moved = run("unscoped")
  finally:
    gin.clear_config()
  moved_by = lambda a: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(PARAMS)))
  assert moved_by(frozen) < 1e-7 and moved_by(moved) > 1e-3
