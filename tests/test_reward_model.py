"""The reward model: hidden states, scoring on the mesh, training, checkpoints, `train-rm`."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import perturb, to_np
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.rewards import model as reward_model
from rest_jax.rewards import training as reward_training
from rest_jax.models import PRESETS
from rest_jax.models import params as params_lib
from rest_jax.tasks.arithmetic import arithmetic_task
from rest_jax.tokenizers import ByteTokenizer
from rest_jax.verifiers import verify_math

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny preset with half its layers and width: a few hundred steps fit in a minute on 2 cores.
CFG = PRESETS["tiny"].replace(num_layers=2, embed_dim=128, num_heads=4, num_kv_heads=2,
                              head_dim=32, mlp_dim=384)
TOK = ByteTokenizer(vocab_size=CFG.vocab_size)


def _mesh(shape):
  n = int(np.prod(shape))
  return mesh_lib.create_mesh(shape, jax.devices()[:n])


def _rm(mesh, seed=0):
  graphdef, params = params_lib.init_params(CFG, mesh, seed=seed)
  return reward_model.from_policy(graphdef, params, CFG, TOK, mesh, seq_len=96)


def test_hidden_states_are_what_the_logits_read():
  mesh = _mesh((1, 1, 1))
  graphdef, params = params_lib.init_params(CFG, mesh)
  from flax import nnx
  tokens = np.arange(24, dtype=np.int32).reshape(2, 12)
  model = nnx.merge(graphdef, params)
  logits, _ = model(tokens)
  hidden, _ = model(tokens, return_hidden=True)
  assert hidden.shape == (2, 12, CFG.embed_dim)
  np.testing.assert_allclose(to_np(hidden @ model.embed[...].T), to_np(logits), atol=1e-4)


def test_scores_on_a_sharded_mesh_equal_one_device_and_padding_is_ignored():
  one = _rm(_mesh((1, 1, 1)))
  one.params["head"]["w"] = jax.random.normal(jax.random.key(1), (CFG.embed_dim,))
  one.params["backbone"] = perturb(one.params["backbone"])
  prompts = [f"Question: {i} + 3\nAnswer:" for i in range(11)]
  comps = [f" {i} + 3 = {i + 3}\n#### {i + 3}" + " pad" * (i % 3) for i in range(11)]
  want = reward_model.RewardScorer(one, _mesh((1, 1, 1)), batch_size=4).score(prompts, comps)
  mesh8 = _mesh((2, 2, 2))
  moved = reward_model.RewardModel(one.config, one.graphdef, jax.device_put(
      one.params, reward_model.param_shardings(mesh8, one.params)), TOK, one.meta)
  got = reward_model.RewardScorer(moved, mesh8, batch_size=8).score(prompts, comps)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert 0.0 < want.min() and want.max() < 1.0 and want.std() > 1e-4  # bce: probabilities
  # One at a time (no padding neighbours, other bucket) gives the same scores.
  alone = [reward_model.RewardScorer(one, _mesh((1, 1, 1)), batch_size=1).score([p], [c])[0]
           for p, c in zip(prompts[:3], comps[:3])]
  np.testing.assert_allclose(alone, want[:3], atol=1e-5)


def test_losses():
  mesh = _mesh((1, 1, 1))
  rm = _rm(mesh)
  tokens, lengths = reward_model.pad_batch([[1, 2, 3], [4, 5], [6], [7, 8]], 8, 4, 0)
  batch = {"tokens": tokens, "lengths": lengths,
           "targets": np.asarray([1.0, 0.0, 1.0, 0.0], np.float32)}
  # A zero head scores 0 everywhere: BCE = log 2, pairwise = log 2, MSE = mean(target^2).
  for loss, want in (("bce", np.log(2)), ("pairwise", np.log(2)), ("mse", 0.5)):
    got = reward_training.loss_fn(rm.graphdef, rm.params, batch, loss)
    assert float(got) == pytest.approx(want, rel=1e-5), loss


def test_completion_supervision_averages_each_rows_completion_tokens():
  """`supervise='completion'`: every position from the completion's first token to the last
  real one predicts the row's label; each row is the mean over its own positions, then rows
  are averaged. Checked against the per-position scores computed here."""
  mesh = _mesh((1, 1, 1))
  rm = _rm(mesh)
  rng = np.random.default_rng(0)
  head = {"w": jnp.asarray(rng.normal(0, 0.3, rm.params["head"]["w"].shape), jnp.float32),
          "b": jnp.asarray(0.1, jnp.float32)}
  params = {**rm.params, "head": head}
  tokens, lengths = reward_model.pad_batch([[1, 2, 3, 4], [4, 5, 6], [6, 7]], 8, 3, 0)
  batch = {"tokens": tokens, "lengths": lengths, "starts": np.asarray([2, 1, 0], np.int32),
           "targets": np.asarray([1.0, 0.0, 1.0], np.float32)}
  raw = np.asarray(reward_model.raw_scores_per_position(rm.graphdef, params, tokens))
  for loss in ("bce", "mse"):
    rows = []
    for i, (start, n) in enumerate(zip(batch["starts"], lengths)):
      r, t = raw[i, start:n], batch["targets"][i]
      per = (np.logaddexp(0, r) - t * r) if loss == "bce" else (r - t) ** 2
      rows.append(per.mean())
    got = reward_training.loss_fn(rm.graphdef, params, batch, loss, "completion")
    assert float(got) == pytest.approx(np.mean(rows), rel=1e-5), loss
    last = reward_training.loss_fn(rm.graphdef, params, batch, loss, "last")
    assert abs(float(got) - float(last)) > 1e-4   # not the last token alone
  # The last position's per-position score is the score the scorer reads.
  np.testing.assert_allclose(
      raw[np.arange(3), lengths - 1],
      np.asarray(reward_model.raw_scores(rm.graphdef, params, tokens, lengths)), atol=1e-5)
  # The start indexes the completion's first token, however much of the prompt was cut.
  for max_len in (100, 5, 4):
    ids, start = reward_model.encode_pair_with_start(TOK, "12", "345", max_len)
    assert ids == reward_model.encode_pair(TOK, "12", "345", max_len)
    assert ids[start] == ord("3") and len(ids) <= max_len


def _arithmetic_examples(num=600, seed=0):
  """Correct solutions and two kinds of wrong ones, labelled by the real math verifier:
  `final` (working right, '#### N' off by 1-3: needs a comparison of the two numbers) and
  `garbled` (the working's characters shuffled and the answer off, like an untrained policy)."""
  rng = random.Random(seed)
  task = arithmetic_task(digits=1, steps=2, wording="expression", num_train=num, num_test=0)
  out = []
  for p in task.problems("train"):
    lines = p.solution.split("\n")
    answer = int(lines[-1].split()[-1])
    wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3])
    work = list("\n".join(lines[:-1]))
    rng.shuffle(work)
    for completion in (p.solution, "\n".join(lines[:-1] + [f"#### {wrong}"]),
                       "".join(work) + f"\n#### {wrong}"):
      reward = verify_math(completion, p.reference).reward
      out.append(reward_training.RMExample(p.prompt, completion, reward, p.id))
  return out


AUC_BAR = 0.7


def test_reward_model_separates_verifier_pass_from_fail_on_heldout_prompts():
  examples = _arithmetic_examples()
  labels = [e.score for e in examples]
  assert sum(labels) == len(examples) // 3  # the verifier passes exactly the correct solutions
  mesh = _mesh((1, 2, 1))
  cfg = reward_training.RewardTrainConfig(steps=300, batch_size=32, learning_rate=1e-3,
                                          warmup_steps=20, seq_len=96, heldout_fraction=0.2)
  rm, stats = reward_training.train(_rm(mesh), examples, mesh, cfg)
  print("reward model stats:", json.dumps(stats))
  assert stats["heldout_examples"] > 300
  assert stats["heldout_auc"] > AUC_BAR, stats
  held = stats["heldout"]
  assert held["mean_score_passed"] > held["mean_score_failed"]


def test_checkpoint_round_trip(tmp_path):
  mesh = _mesh((1, 2, 1))
  rm = _rm(mesh)
  rm.params["head"]["b"] = rm.params["head"]["b"] + 0.7
  path = reward_model.save(rm, tmp_path / "rm")
  back = reward_model.load(path, _mesh((2, 1, 1)))
  assert back.meta["loss"] == "bce" and back.seq_len == 96 and back.config == CFG
  args = (["Question: 1 + 2\nAnswer:"] * 2, [" 1 + 2 = 3\n#### 3", " #### 4"])
  np.testing.assert_allclose(reward_model.RewardScorer(back, _mesh((2, 1, 1))).score(*args),
                             reward_model.RewardScorer(rm, mesh).score(*args), atol=1e-6)
  with pytest.raises(Exception, match="not a reward model checkpoint"):
    reward_model.load(tmp_path, mesh)


def test_loglik_head_reads_the_completions_mean_log_probability(tmp_path):
  """`last+loglik`: the score adds `a` x the mean log-probability of the completion's tokens
  (never the prompt's) under the backbone's LM head, checked against a log-softmax here; the
  logistic fit gives likelier completions the higher score; a checkpoint keeps `a`."""
  from flax import nnx
  mesh = _mesh((1, 1, 1))
  graphdef, params = params_lib.init_params(CFG, mesh, seed=3)
  rm = reward_model.from_policy(graphdef, params, CFG, TOK, mesh, seq_len=96, head="last+loglik")
  assert set(rm.params["head"]) == {"w", "b", "a"} and rm.head == "last+loglik"
  rm.params["head"] = {**rm.params["head"], "a": jnp.asarray(2.0), "b": jnp.asarray(0.5)}
  prompts = ["Question: 1 + 2\nAnswer:", "Question: 7 - 5\nAnswer:"]
  comps = [" 1 + 2 = 3\n#### 3", " #### 9"]
  got = reward_model.RewardScorer(dataclasses.replace(rm, meta={**rm.meta, "loss": "mse"}),
                                  mesh).score(prompts, comps)
  model = nnx.merge(graphdef, params)
  for i, (p, c) in enumerate(zip(prompts, comps)):
    ids, start = reward_model.encode_pair_with_start(TOK, p, c, 96)
    logits, _ = model(np.asarray([ids], np.int32))
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1))
    mean_ll = np.mean([logp[q - 1, ids[q]] for q in range(start, len(ids))])
    assert got[i] == pytest.approx(0.5 + 2.0 * mean_ll, abs=1e-4)

  # Labels that follow the log-likelihood: the fit's weight is positive and ranks them.
  seqs = [reward_model.encode_pair_with_start(TOK, f"Question: {i}\nAnswer:", f" #### {i * 7}",
                                              96) for i in range(40)]
  probe = reward_model.RewardScorer(dataclasses.replace(rm, meta={**rm.meta, "loss": "mse"}),
                                    mesh)
  lls = (probe.score_tokens([t for t, _ in seqs], None, [st for _, st in seqs]) - 0.5) / 2.0
  passed = lls > np.median(lls)
  fitted = reward_training._fit_loglik_weight(rm, mesh, [t for t, _ in seqs],
                                              [st for _, st in seqs], passed)
  assert float(fitted.params["head"]["a"]) > 0
  path = reward_model.save(fitted, tmp_path / "rm")
  back = reward_model.load(path, mesh)
  assert back.head == "last+loglik"
  assert float(back.params["head"]["a"]) == pytest.approx(float(fitted.params["head"]["a"]))


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", "rest_jax.cli", "train-rm", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=env)


def test_train_rm_cli_on_a_tiny_jsonl(tmp_path):
  rows = [{"prompt": f"Question: {i} + 1\nAnswer:", "completion": f" #### {i + 1 + (j % 2)}",
           "reward": float(j % 2 == 0), "prompt_id": f"p{i}"} for i in range(12) for j in range(2)]
  data = tmp_path / "data.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = _cli("--input", str(data), "--model", "tiny", "--output", str(tmp_path / "rm"),
             "--steps", "4", "--batch_size", "8", "--seq_len", "64",
             "--heldout_fraction", "0.3")
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["steps"] == 4 and summary["examples"] == 24 and summary["heldout_examples"] > 0
  assert "heldout_auc" in summary
  rm = reward_model.load(tmp_path / "rm", _mesh((1, 1, 1)))
  assert rm.meta["trained"]["steps"] == 4 and rm.config == PRESETS["tiny"]


@pytest.mark.parametrize("content,expect", [
    ('{"prompt": "q", "completion": "c", "reward": 1}\nnot json\n', ":2: not valid JSON"),
    ('{"prompt": "q", "completion": "c"}\n', ":1: missing key 'reward' (or 'score')"),
    ('{"prompt": "q", "reward": 1}\n', ":1: missing key 'completion'"),
    ('{"prompt": "q", "completion": "c", "reward": "yes"}\n', ":1: 'reward' must be a number"),
    ('[1, 2]\n', ":1: expected a JSON object"),
])
def test_train_rm_cli_reports_bad_input(tmp_path, content, expect):
  data = tmp_path / "bad.jsonl"
  data.write_text(content)
  out = _cli("--input", str(data), "--model", "tiny", "--output", str(tmp_path / "rm"))
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"bad.jsonl{expect}" in out.stderr and "Traceback" not in out.stderr


def test_train_rm_cli_reports_missing_inputs(tmp_path):
  out = _cli("--input", str(tmp_path / "nope.jsonl"), "--model", "tiny", "--output",
             str(tmp_path / "rm"))
  assert out.returncode == 2 and "nope.jsonl: no such file" in out.stderr
  out = _cli("--input", str(tmp_path), "--model", "tiny", "--output", str(tmp_path / "rm"))
  assert out.returncode == 2 and "without sample shards" in out.stderr
  out = _cli("--input", str(tmp_path / "*.jsonl"), "--model", "tiny", "--output",
             str(tmp_path / "rm"))
  assert out.returncode == 2 and "matches no file" in out.stderr
  assert "Traceback" not in out.stderr
