"""ReST-EM on the `programs` task through the real sandbox: a run killed inside Verify and
inside Improve resumes to the uninterrupted results, and a policy that writes hostile
programs (fork bomb, endless loop, hundreds of MB of output) gets reward 0 for them and
leaves no process behind."""

import json
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
from etils import epath

import run_helpers as rh

SMALL = [
    "--gin_file=runs/demo_code.gin",
    "--gin.programs_task.num_train=32", "--gin.programs_task.num_test=8",
    "--gin.LoopConfig.iterations=1", "--gin.LoopConfig.sft_baseline=False",
    "--gin.LoopConfig.num_train_prompts=16", "--gin.LoopConfig.num_human_solutions=8",
    "--gin.LoopConfig.num_val_prompts=4", "--gin.LoopConfig.num_eval_prompts=4",
    "--gin.LoopConfig.num_eval_train_prompts=4", "--gin.LoopConfig.num_samples=4",
    "--gin.LoopConfig.eval_samples=2", "--gin.LoopConfig.prompts_per_shard=8",
    "--gin.LoopConfig.base_sft_steps=30", "--gin.LoopConfig.sampler_slots=16",
    "--gin.ImproveConfig.steps=8", "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.create_mesh.shape=(1, 2, 1)",
]
K = 4  # LoopConfig.num_samples above: only the E-step samples this many per prompt
GENERATE_SHARDS = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # Reruns reuse the compiled programs (the runs here are mostly compilation).
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(rh.two_device_env(), JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
  workdir = tmp_path_factory.mktemp("straight")
  rh.run(SMALL, workdir, env=env)
  return workdir


def _rows(workdir) -> list[dict]:
  """Iteration 1's E-step samples with their verdicts."""
  rows = []
  for path in sorted((epath.Path(workdir) / "iter_001" / "samples").glob("shard-*.jsonl")):
    rows += [json.loads(line) for line in path.read_text().splitlines()]
  return rows


def _samples(workdir) -> list[tuple]:
  # Not the verdict's reason: a timeout's says how long it took.
  return [(r["prompt_id"], r["sample_idx"], r["completion"], r["reward"], r["verdict"])
          for r in _rows(workdir)]


class _Verifying:
  """True while iteration 1's Generate phase is verifying: a verifier worker of the run (or
  its sandbox) uses CPU. Workers idle while the model samples, so CPU time there means the
  sandbox is running programs. The first second of the phase is not watched: a worker may
  still be booting its next sandbox after the last evaluation."""

  def __init__(self):
    self.last = self.since = None

  def __call__(self, workdir, pid) -> bool:
    try:
      done = json.loads((workdir / "state.json").read_text()).get("done", [])
    except (FileNotFoundError, ValueError):
      return False
    if "iter_000/evaluate" not in done or "iter_001/filter" in done:
      self.last = self.since = None
      return False
    self.since = self.since or time.monotonic()
    if time.monotonic() - self.since < 1.0:
      return False
    busy = 0.0
    try:
      workers = [c for c in psutil.Process(pid).children()
                 if "worker.main()" in " ".join(c.cmdline())]
      for w in workers:
        for p in [w] + w.children(recursive=True):
          busy += sum(p.cpu_times()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      return False
    before, self.last = self.last, busy
    return before is not None and busy > before


def test_run_killed_in_verify_and_in_improve_resumes_to_the_same_results(uninterrupted, env,
                                                                         tmp_path):
  straight = _samples(uninterrupted)
  assert len(straight) == 16 * K and any(r[3] == 1.0 for r in straight), (
      "the reduced base solves nothing: the kept set would be empty")
  workdir = tmp_path / "killed"
  rng = random.Random(0)
  assert rh.kill_when(SMALL, workdir, None, rng, env=env, proc_marker=_Verifying()), (
      "the run finished before Verify")
  state = json.loads((workdir / "state.json").read_text())
  assert "iter_001/filter" not in state["done"]
  assert len(state["shards"].get("iter_001/samples", [])) < GENERATE_SHARDS, "killed after Verify"

  def improving(wd):  # after Improve's first mid-training checkpoint
    d = wd / "checkpoints" / "train_iter_001"
    return d.exists() and any(p.name.isdigit() for p in d.iterdir())

  assert rh.kill_when(SMALL, workdir, improving, rng, env=env), "the run finished before Improve"
  assert "iter_001/improve" not in json.loads((workdir / "state.json").read_text())["done"]
  rh.run(SMALL, workdir, env=env)
  assert _samples(workdir) == straight
  assert (workdir / "iter_001" / "kept.jsonl").read_text() == (
      uninterrupted / "iter_001" / "kept.jsonl").read_text()
  for stage in ("iter_000", "iter_001"):
    assert rh.metrics(workdir, stage) == rh.metrics(uninterrupted, stage)
  for a, b in zip(rh.checkpoint_params(workdir, "iter_001"),
                  rh.checkpoint_params(uninterrupted, "iter_001")):
    np.testing.assert_array_equal(a, b)


# name: (program, the start of the prompts it replaces a sample of). In function problems
# the program runs below the prompt's header; stdout goes nowhere there, so the flood goes
# to a stdin/stdout problem, whose output is captured (and capped).
HOSTILE = {
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass\n", "def f("),
    "endless loop": ("while True:\n    pass\n", "# Read "),
    "320 MB of output": ("for _ in range(5000):\n    print('y' * 65536)\n", "# Read "),
}

# Runs the loop with Sampler.generate wrapped: in the E-step, sample 0 of the first prompt
# that starts as asked becomes each hostile program. As a child subreaper it then collects
# whatever the run left behind (orphans are re-parented to it) and prints it as JSON.
_HOSTILE_RUN = textwrap.dedent("""
    import ctypes, dataclasses, json, sys, time
    import psutil
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    from rest_jax import cli
    from rest_jax.sampling.sampler import Sampler

    pending, k, argv = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    original = Sampler.generate
    injected = []

    def generate(self, params, prompts, *, num_samples, **kwargs):
      groups = original(self, params, prompts, num_samples=num_samples, **kwargs)
      if num_samples == k:
        for ids, group in zip(prompts, groups):
          text = self.tokenizer.decode(ids)
          match = next((p for p in pending if text.startswith(p[1])), None)
          if match:
            group[0] = dataclasses.replace(group[0], text=match[0])
            pending.remove(match)
            injected.append(match[0])
      return groups

    Sampler.generate = generate
    rc = cli.main(argv)
    me = psutil.Process()
    for _ in range(100):
      left = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
      if not left:
        break
      time.sleep(0.1)
    print(json.dumps({"rc": rc, "injected": len(injected),
                      "left": [" ".join(p.cmdline())[:200] for p in left]}))
""")


def test_hostile_programs_fail_and_leave_no_process(tmp_path, env):
  script = tmp_path / "hostile_run.py"
  script.write_text(_HOSTILE_RUN)
  workdir = tmp_path / "hostile"
  cmd = [sys.executable, str(script), json.dumps(list(HOSTILE.values())), str(K), "run",
         *SMALL, f"--gin.WORKDIR='{workdir}'"]
  out = subprocess.run(cmd, cwd=rh.REPO, capture_output=True, text=True, env=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report == {"rc": 0, "injected": len(HOSTILE), "left": []}, report
  assert json.loads((workdir / "state.json").read_text())["finished"]
  rows = {r["completion"]: r for r in _rows(workdir)}
  verdicts = {name: (rows[program]["reward"], rows[program]["verdict"])
              for name, (program, _) in HOSTILE.items()}
  assert verdicts == {"fork bomb": (0.0, "timeout"), "endless loop": (0.0, "timeout"),
                      "320 MB of output": (0.0, "fail")}, verdicts
  assert "stdout exceeded" in rows[HOSTILE["320 MB of output"][0]]["reason"]
  kept = (workdir / "iter_001" / "kept.jsonl").read_text()
  assert not any(json.dumps(p)[1:-1] in kept for p, _ in HOSTILE.values())
