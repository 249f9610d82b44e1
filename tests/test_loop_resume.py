"""The ReST-EM loop end to end on the tiny model, uninterrupted and killed/resumed."""

import json
import random
import subprocess
import time

import numpy as np
import pytest
from etils import epath

import run_helpers as rh
from rest_jax.runtime import telemetry

SMALL = [
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=2", "--gin.LoopConfig.num_train_prompts=32",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.num_val_prompts=8",
    "--gin.LoopConfig.num_samples=4", "--gin.LoopConfig.eval_samples=2",
    "--gin.LoopConfig.eval_ks=(1, 2)", "--gin.LoopConfig.prompts_per_shard=8",
    "--gin.LoopConfig.base_sft_steps=30", "--gin.LoopConfig.max_new_tokens=32",
    "--gin.LoopConfig.sampler_slots=16", "--gin.ImproveConfig.steps=12",
    "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.create_mesh.shape=(1, 2, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  rh.run(SMALL, workdir)
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


def test_killed_and_resumed_run_on_a_bucket_equals_uninterrupted_on_local_disk(uninterrupted,
                                                                              gcs):
  """WORKDIR on gs:// (the emulator), SIGKILLed in Generate, Improve and Evaluate, then cut
  off from its bucket in the next Generate, then rerun: the same kept samples, metrics and
  final parameters as the run on local disk."""
  rng = random.Random(0)
  workdir = epath.Path(gcs.make_bucket("resume")) / "killed"
  markers = [
      # inside Generate: after the first shard file of iteration 1
      lambda wd: (wd / "iter_001" / "samples" / "shard-00000-of-00004.jsonl").exists(),
      # inside Improve: after its first mid-training checkpoint
      lambda wd: (wd / "checkpoints" / "train_iter_001").exists() and any(
          p.name.isdigit() for p in (wd / "checkpoints" / "train_iter_001").iterdir()),
      # inside Evaluate: after the first held-out shard
      lambda wd: (wd / "iter_001" / "eval_heldout" / "shard-00000-of-00002.jsonl").exists(),
  ]
  killed = [rh.kill_when(SMALL, workdir, marker, rng) for marker in markers]
  assert any(killed), "every run finished before its kill point"
  _outage_in_the_second_generate(gcs, workdir)
  rh.run(SMALL, workdir)
  for stage in ("iter_001", "iter_002"):
    assert (workdir / stage / "kept.jsonl").read_text() == (
        uninterrupted / stage / "kept.jsonl").read_text()
  for stage in ("iter_000", "sft_human", "iter_001", "iter_002"):
    assert rh.metrics(workdir, stage) == rh.metrics(uninterrupted, stage)
  for a, b in zip(rh.checkpoint_params(workdir, "iter_002"),
                  rh.checkpoint_params(uninterrupted, "iter_002")):
    np.testing.assert_array_equal(a, b)
  # On the bucket the rows went to immutable parts (no appends); a resumed run keeps every
  # stage's evaluation row, as the uninterrupted one has them.
  objects = gcs.objects("resume", "killed/")
  assert "killed/metrics.jsonl" not in objects
  assert any(o.startswith("killed/metrics/part-") for o in objects)
  assert not any("/." in o or ".tmp" in o for o in objects), "a temporary left on the bucket"
  def evaluated(rows):
    return {r["stage"] for r in rows if r.get("phase") == "evaluate"}
  assert evaluated(telemetry.read_metrics(workdir)) == evaluated(
      telemetry.read_metrics(uninterrupted))


def test_changed_config_is_refused_with_a_diff(uninterrupted):
  cmd = rh.run_cmd(SMALL, uninterrupted) + ["--gin.LoopConfig.num_samples=5"]
  out = subprocess.run(cmd, cwd=rh.REPO, capture_output=True, text=True,
                       env=rh.two_device_env(), timeout=600)
  assert out.returncode == 2
  assert "different config" in out.stderr
  assert "-LoopConfig.num_samples = 4" in out.stderr and "+LoopConfig.num_samples = 5" in out.stderr


def test_a_setting_that_solves_nothing_stops_in_one_line_and_a_changed_rerun_goes_on(tmp_path):
  """Shown work checked after 30 base steps: no sample of iter_001 passes. The run ends with
  one line naming the stage and what to change (exit 2), keeps what is done and sets the
  iteration's samples aside; rerun with answers alone checked (a config change, allowed), it
  goes on from iter_001's Generate without redoing the base."""
  flags = [f for f in SMALL if "check_work" not in f and "iterations" not in f] + [
      "--gin.LoopConfig.iterations=1", "--gin.LoopConfig.sft_baseline=False"]
  out = subprocess.run(rh.run_cmd(flags + ["--gin.arithmetic_task.check_work=True"], tmp_path),
                       cwd=rh.REPO, capture_output=True, text=True, env=rh.two_device_env(),
                       timeout=900)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("rest-jax run:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert errors[0].startswith("rest-jax run: iter_001: no sample passed the verifier")
  assert "allow_config_change=True" in errors[0]
  wd = epath.Path(tmp_path)
  state = json.loads((wd / "state.json").read_text())
  assert "iter_000/evaluate" in state["done"]
  assert not any(d.startswith("iter_001/") for d in state["done"])
  assert not (wd / "iter_001").exists()
  aside = wd / "iter_001.nothing_kept.1"
  assert [json.loads(l)["reward"] for p in (aside / "samples").glob("shard-*.jsonl")
          for l in p.read_text().splitlines()] and (aside / "kept.jsonl").read_text() == ""
  base = (wd / "iter_000" / "metrics.json").read_text()

  out = subprocess.run(rh.run_cmd(flags + ["--gin.arithmetic_task.check_work=False",
                                           "--gin.LoopConfig.allow_config_change=True"],
                                  tmp_path),
                       cwd=rh.REPO, capture_output=True, text=True, env=rh.two_device_env(),
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (wd / "iter_000" / "metrics.json").read_text() == base    # the base was not redone
  assert json.loads((wd / "state.json").read_text())["finished"]
  assert (wd / "iter_001" / "kept.jsonl").read_text().strip()


def _outage_in_the_second_generate(gcs, workdir):
  """The storage endpoint stops answering in the middle of Generate: the run ends (after the
  storage library's retries) with one line naming WORKDIR, exit 2, and what it had finished
  stays recorded. The endpoint then comes back (same objects, same address)."""
  first_shard = "killed/iter_002/samples/shard-00000-of-00004.jsonl"
  proc = subprocess.Popen(rh.run_cmd(SMALL, workdir), cwd=rh.REPO, env=rh.two_device_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    while proc.poll() is None and first_shard not in gcs.objects("resume", "killed/iter_002/"):
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the outage"
    done = json.loads((workdir / "state.json").read_text())["done"]
    assert "iter_001/improve" in done
    gcs.stop()
    _, err = proc.communicate(timeout=600)
  finally:
    if gcs.proc is None:
      gcs.start()
  assert proc.returncode == 2, err[-3000:]
  # One line (after a progress bar's last refresh, on the same terminal line), no traceback.
  lines = [l for l in err.splitlines() if "rest-jax run:" in l]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  message = lines[0][lines[0].index("rest-jax run:"):]
  assert message.startswith(f"rest-jax run: {workdir}/") and "storage endpoint" in message, (
      message)
  assert set(done) <= set(json.loads((workdir / "state.json").read_text())["done"])
