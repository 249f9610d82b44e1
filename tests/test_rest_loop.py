"""The original ReST loop end to end on the nano model: one Grow, a reward model trained on its
verifier labels, three Improve steps at rising thresholds; uninterrupted and killed/resumed."""

import json
import random

import numpy as np
import pytest
from etils import epath

import run_helpers as rh

SMALL = [
    "--gin_file=runs/rest_rm_demo.gin",
    "--gin.LoopConfig.num_train_prompts=32", "--gin.LoopConfig.num_samples=4",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.num_val_prompts=8",
    "--gin.LoopConfig.eval_samples=2", "--gin.LoopConfig.eval_ks=(1, 2)",
    "--gin.LoopConfig.prompts_per_shard=8", "--gin.LoopConfig.base_sft_steps=30",
    "--gin.LoopConfig.max_new_tokens=32", "--gin.LoopConfig.sampler_slots=16",
    "--gin.LoopConfig.sft_baseline=False",
    "--gin.ImproveConfig.steps=12", "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.ReSTConfig.min_score=None",
    # Per-prompt quantiles: every step keeps some samples, whatever a 30-step reward model says.
    "--gin.ReSTConfig.threshold_mode='quantile'", "--gin.ReSTConfig.thresholds=(0.0, 0.5, 0.75)",
    "--gin.RewardTrainConfig.steps=30", "--gin.RewardTrainConfig.batch_size=16",
    "--gin.RewardTrainConfig.heldout_fraction=0.25",
    "--gin.create_mesh.shape=(1, 2, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]
STEPS = ("iter_001", "iter_002", "iter_003")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("rest_straight")
  rh.run(SMALL, workdir)
  return workdir


def test_rest_run_leaves_its_workdir_and_report(uninterrupted):
  wd = epath.Path(uninterrupted)
  for name in ("config.gin", "state.json", "report.md", "report.png", "grow_001/scores.jsonl",
               "grow_001/counts.json", "reward_model/metrics.json",
               "checkpoints/reward_model", "iter_000/metrics.json",
               *[f"{s}/{f}" for s in STEPS for f in ("kept.jsonl", "metrics.json")]):
    assert (wd / name).exists(), name
  assert len(list((wd / "grow_001" / "samples").glob("shard-*.jsonl"))) == 4
  assert not (wd / "iter_001" / "samples").exists()  # one Grow feeds all three Improve steps
  state = rh.read_json(wd, "state.json")
  assert state["finished"] and state["best_iteration"] in (1, 2, 3)
  assert {"reward_model/train", "grow_001/score", "iter_003/improve",
          "iter_003/best_of_n"} <= set(state["done"])
  rm = rh.read_json(wd, "reward_model/metrics.json")
  assert rm["steps"] == 30 and rm["heldout_examples"] > 0
  held = rh.metrics(wd, "iter_003")["heldout"]
  assert {"pass@1", "pass@2", "maj@2", "rm_best_of_1", "rm_best_of_2"} <= set(held)
  assert "heldout_mean_score" in rh.metrics(wd, "iter_003")["reward"]
  report = (wd / "report.md").read_text()
  assert "## ReST: Grow and Improve steps" in report and "held-out best-of-2 (reward)" in report
  for stage in ("base", *STEPS):
    assert f"| {stage} |" in report
  # The verdict line and the run's summary, as ReST-EM writes them.
  summary = rh.read_json(wd, "metrics.json")
  assert summary["finished"] and summary["best_iteration"] == state["best_iteration"]
  cmp = summary["comparison"]
  assert cmp["best_iteration"] == state["best_iteration"] and "vs_base" in cmp
  assert cmp["verdict"].startswith(("**Verdict: ReST gains.**",
                                     "**Verdict: no gain shown by ReST.**")), cmp["verdict"]
  assert cmp["verdict"] in report
  assert {"base", *STEPS} <= set(summary["stages"])


def test_thresholds_rise_and_kept_set_shrinks(uninterrupted):
  counts = [rh.read_json(uninterrupted, f"{s}/counts.json")["counts"] for s in STEPS]
  assert [c["improve_step"] for c in counts] == [1, 2, 3]
  taus = [c["threshold_mean"] for c in counts]
  kept = [c["kept"] for c in counts]
  assert taus[0] < taus[1] < taus[2], taus
  assert kept[0] >= kept[1] >= kept[2] and kept[0] > kept[2] > 0, kept
  sets = [{(k["prompt_id"], k["sample_idx"]) for k in map(
      json.loads, (epath.Path(uninterrupted) / s / "kept.jsonl").read_text().splitlines())}
      for s in STEPS]
  assert sets[0] >= sets[1] >= sets[2]
  # The Grow dataset holds the human solutions too (sample_idx K = 4, after the samples),
  # counted apart from the policy's 4 x 32 samples.
  assert all(c["samples"] == 128 and c["human"] > 0 for c in counts), counts
  human = [(p, i) for p, i in sets[0] if i == 4]
  assert len(human) == counts[0]["kept_human"] > 0
  scored = rh.read_jsonl(uninterrupted, "grow_001/scores.jsonl")
  assert len(scored) == 128 + counts[0]["human"]
  # Warm start: step 2 trains from step 1's policy, so the params differ from step 1's.
  a = rh.checkpoint_params(uninterrupted, "iter_001")
  b = rh.checkpoint_params(uninterrupted, "iter_002")
  assert any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_killed_and_resumed_rest_run_equals_uninterrupted(uninterrupted, tmp_path):
  rng = random.Random(0)
  workdir = tmp_path / "killed"
  markers = [
      # inside the Grow: after its first shard
      lambda wd: (wd / "grow_001" / "samples" / "shard-00000-of-00004.jsonl").exists(),
      # inside Improve step 2: after its first mid-training checkpoint
      lambda wd: (wd / "checkpoints" / "train_iter_002").exists() and any(
          p.name.isdigit() for p in (wd / "checkpoints" / "train_iter_002").iterdir()),
  ]
  killed = [rh.kill_when(SMALL, workdir, marker, rng) for marker in markers]
  assert any(killed), "every run finished before its kill point"
  rh.run(SMALL, workdir)
  assert (workdir / "grow_001" / "scores.jsonl").read_text() == (
      uninterrupted / "grow_001" / "scores.jsonl").read_text()
  for stage in STEPS:
    assert (workdir / stage / "kept.jsonl").read_text() == (
        uninterrupted / stage / "kept.jsonl").read_text()
  for stage in ("iter_000", *STEPS):
    assert rh.metrics(workdir, stage) == rh.metrics(uninterrupted, stage)
  for a, b in zip(rh.checkpoint_params(workdir, "iter_003"),
                  rh.checkpoint_params(uninterrupted, "iter_003")):
    np.testing.assert_array_equal(a, b)
