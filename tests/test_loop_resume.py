"""The ReST-EM loop end to end on the tiny model, uninterrupted and killed/resumed."""

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
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=2", "--gin.LoopConfig.num_train_prompts=32",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.num_samples=4", "--gin.LoopConfig.eval_samples=2",
    "--gin.LoopConfig.eval_ks=(1, 2)", "--gin.LoopConfig.prompts_per_shard=8",
    "--gin.LoopConfig.base_sft_steps=30", "--gin.LoopConfig.max_new_tokens=32",
    "--gin.LoopConfig.sampler_slots=16", "--gin.ImproveConfig.steps=12",
    "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.create_mesh.shape=(1, 2, 1)",
]


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
  cfg = PRESETS["tiny"]
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  _, abstract = abstract_params(cfg)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, params_lib.shardings(mesh, abstract))
  with ckpt_lib.CheckpointManager(epath.Path(workdir) / "checkpoints" / stage) as m:
    return [np.asarray(x) for x in jax.tree.leaves(m.restore_params(0, target))]


def _metrics(workdir, stage):
  m = json.loads((epath.Path(workdir) / stage / "metrics.json").read_text())
  m.pop("times", None)
  m.get("counts", {}).pop("sample_s", None)
  for k in ("verify_s", "tokens_per_s", "verdicts_per_s"):
    m.get("counts", {}).pop(k, None)
  return m


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  _run(workdir)
  return workdir


def test_run_leaves_the_documented_workdir(uninterrupted):
  wd = epath.Path(uninterrupted)
  for name in ("config.gin", "state.json", "metrics.jsonl", "report.md", "report.png",
               "iter_001/kept.jsonl", "iter_001/metrics.json", "iter_002/metrics.json",
               "sft_human/metrics.json", "iter_000/metrics.json"):
    assert (wd / name).exists(), name
  assert sorted(p.name for p in (wd / "iter_001" / "samples").iterdir()) == [
      f"shard-{i:05d}-of-00004.jsonl" for i in range(4)]
  state = json.loads((wd / "state.json").read_text())
  assert state["finished"] and state["best_iteration"] in (1, 2)
  rows = [json.loads(l) for l in (wd / "iter_001" / "samples" / "shard-00000-of-00004.jsonl")
          .read_text().splitlines()]
  assert len(rows) == 8 * 4
  assert {"prompt_id", "sample_idx", "prompt", "completion", "tokens", "reward",
          "verdict"} <= set(rows[0])
  kept = [json.loads(l) for l in (wd / "iter_001" / "kept.jsonl").read_text().splitlines()]
  assert all(k["reward"] == 1.0 for k in kept)
  report = (wd / "report.md").read_text()
  for stage in ("base", "sft_human", "iter_001", "iter_002"):
    assert f"| {stage} |" in report


def test_killed_and_resumed_run_equals_uninterrupted(uninterrupted, tmp_path):
  rng = random.Random(0)
  workdir = tmp_path / "killed"
  markers = [
      # inside Generate: after the first shard file of iteration 1
      lambda wd: (wd / "iter_001" / "samples" / "shard-00000-of-00004.jsonl").exists(),
      # inside Improve: after its first mid-training checkpoint
      lambda wd: (wd / "checkpoints" / "train_iter_001").exists() and any(
          p.name.isdigit() for p in (wd / "checkpoints" / "train_iter_001").iterdir()),
      # inside Evaluate: after the first held-out shard
      lambda wd: (wd / "iter_001" / "eval_heldout" / "shard-00000-of-00002.jsonl").exists(),
  ]
  killed = [_kill_when(workdir, marker, rng) for marker in markers]
  assert any(killed), "every run finished before its kill point"
  _run(workdir)
  for stage in ("iter_001", "iter_002"):
    assert (workdir / stage / "kept.jsonl").read_text() == (
        uninterrupted / stage / "kept.jsonl").read_text()
  for stage in ("iter_000", "sft_human", "iter_001", "iter_002"):
    assert _metrics(workdir, stage) == _metrics(uninterrupted, stage)
  for a, b in zip(_params(workdir, "iter_002"), _params(uninterrupted, "iter_002")):
    np.testing.assert_array_equal(a, b)


def test_changed_config_is_refused_with_a_diff(uninterrupted):
  cmd = _cmd(uninterrupted) + ["--gin.LoopConfig.num_samples=5"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
  assert out.returncode == 2
  assert "different config" in out.stderr
  assert "-LoopConfig.num_samples = 4" in out.stderr and "+LoopConfig.num_samples = 5" in out.stderr
