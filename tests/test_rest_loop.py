"""The original ReST loop end to end on the tiny model: one Grow, a reward model trained on its
verifier labels, three Improve steps at rising thresholds; uninterrupted and killed/resumed."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

from rest_jax import checkpoints as ckpt_lib
from rest_jax import mesh as mesh_lib
from rest_jax.models import PRESETS, abstract_params
from rest_jax.models import params as params_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--gin_file=runs/rest_rm_demo.gin",
    "--gin.LoopConfig.num_train_prompts=32", "--gin.LoopConfig.num_samples=4",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.eval_samples=2", "--gin.LoopConfig.eval_ks=(1, 2)",
    "--gin.LoopConfig.prompts_per_shard=8", "--gin.LoopConfig.base_sft_steps=30",
    "--gin.LoopConfig.max_new_tokens=32", "--gin.LoopConfig.sampler_slots=16",
    "--gin.LoopConfig.sft_baseline=False",
    "--gin.ImproveConfig.steps=12", "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.ReSTConfig.min_score=None",
    "--gin.RewardTrainConfig.steps=30", "--gin.RewardTrainConfig.batch_size=16",
    "--gin.RewardTrainConfig.heldout_fraction=0.25",
    "--gin.create_mesh.shape=(1, 2, 1)",
]
STEPS = ("iter_001", "iter_002", "iter_003")


def _cmd(workdir):
  return [sys.executable, "-m", "rest_jax.cli", "run", *SMALL, f"--gin.WORKDIR='{workdir}'"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return env


def _run(workdir):
  out = subprocess.run(_cmd(workdir), cwd=REPO, capture_output=True, text=True, env=_env(),
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _kill_when(workdir, marker, rng):
  """Starts the run, SIGKILLs it a random moment after `marker(workdir)` turns true."""
  proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if marker(epath.Path(workdir)):
      time.sleep(rng.uniform(0.0, 0.3))
      break
    time.sleep(0.05)
  finished = proc.poll() is not None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return not finished


def _params(workdir, stage):
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  _, abstract = abstract_params(PRESETS["tiny"])
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, params_lib.shardings(mesh, abstract))
  with ckpt_lib.CheckpointManager(epath.Path(workdir) / "checkpoints" / stage) as m:
    return [np.asarray(x) for x in jax.tree.leaves(m.restore_params(0, target))]


def _json(workdir, name):
  return json.loads((epath.Path(workdir) / name).read_text())


def _metrics(workdir, stage):
  m = _json(workdir, f"{stage}/metrics.json")
  m.pop("times", None)
  return m


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("rest_straight")
  _run(workdir)
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
  state = _json(wd, "state.json")
  assert state["finished"] and state["best_iteration"] in (1, 2, 3)
  assert {"reward_model/train", "grow_001/score", "iter_003/improve",
          "iter_003/best_of_n"} <= set(state["done"])
  rm = _json(wd, "reward_model/metrics.json")
  assert rm["steps"] == 30 and rm["heldout_examples"] > 0
  held = _metrics(wd, "iter_003")["heldout"]
  assert {"pass@1", "pass@2", "maj@2", "rm_best_of_1", "rm_best_of_2"} <= set(held)
  assert "heldout_mean_score" in _metrics(wd, "iter_003")["reward"]
  report = (wd / "report.md").read_text()
  assert "## ReST: Grow and Improve steps" in report and "held-out best-of-2 (reward)" in report
  for stage in ("base", *STEPS):
    assert f"| {stage} |" in report


def test_thresholds_rise_and_kept_set_shrinks(uninterrupted):
  counts = [_json(uninterrupted, f"{s}/counts.json")["counts"] for s in STEPS]
  assert [c["improve_step"] for c in counts] == [1, 2, 3]
  taus = [c["threshold_mean"] for c in counts]
  kept = [c["kept"] for c in counts]
  assert taus[0] < taus[1] < taus[2], taus
  assert kept[0] >= kept[1] >= kept[2] and kept[0] > kept[2] > 0, kept
  sets = [{(k["prompt_id"], k["sample_idx"]) for k in map(
      json.loads, (epath.Path(uninterrupted) / s / "kept.jsonl").read_text().splitlines())}
      for s in STEPS]
  assert sets[0] >= sets[1] >= sets[2]
  # Warm start: step 2 trains from step 1's policy, so the params differ from step 1's.
  a, b = _params(uninterrupted, "iter_001"), _params(uninterrupted, "iter_002")
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
  killed = [_kill_when(workdir, marker, rng) for marker in markers]
  assert any(killed), "every run finished before its kill point"
  _run(workdir)
  assert (workdir / "grow_001" / "scores.jsonl").read_text() == (
      uninterrupted / "grow_001" / "scores.jsonl").read_text()
  for stage in STEPS:
    assert (workdir / stage / "kept.jsonl").read_text() == (
        uninterrupted / stage / "kept.jsonl").read_text()
  for stage in ("iter_000", *STEPS):
    assert _metrics(workdir, stage) == _metrics(uninterrupted, stage)
  for a, b in zip(_params(workdir, "iter_003"), _params(uninterrupted, "iter_003")):
    np.testing.assert_array_equal(a, b)
