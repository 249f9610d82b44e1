"""Running `rest-jax run` in a subprocess, killing it, and reading back what it left."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from etils import epath

from rest_jax.runtime import checkpoints as ckpt_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.models import abstract_params
from rest_jax.models import loading
from rest_jax.models import params as params_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Timings: they differ between any two runs.
_TIMING_COUNTS = ("sample_s", "verify_s", "wall_s", "tokens_per_s", "verdicts_per_s")
# What this process (process 0 writes the metrics) verified: its share, by process count.
_PROCESS_COUNTS = ("verified",)


def run_cmd(flags, workdir) -> list[str]:
  return [sys.executable, "-m", "rest_jax.cli", "run", *flags, f"--gin.WORKDIR='{workdir}'"]


# One persistent compilation cache for every run the tests start: they share the demo's
# shapes, so most of their programs compile once per session instead of once per run.
COMPILATION_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                 f"rest_jax_test_cache_{os.getuid()}")


def two_device_env() -> dict:
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def run(flags, workdir, env=None):
  out = subprocess.run(run_cmd(flags, workdir), cwd=REPO, capture_output=True, text=True,
                       env=env or two_device_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def kill_when(flags, workdir, marker, rng, env=None, proc_marker=None) -> bool:
  """Starts the run, SIGKILLs it a random moment after `marker(workdir)` turns true.

  proc_marker: instead of `marker`, `proc_marker(workdir, pid)` (it may look at the run's
  processes); the kill then follows at once, for moments shorter than the random delay.
  Returns whether the run was still going when killed.
  """
  proc = subprocess.Popen(run_cmd(flags, workdir), cwd=REPO, env=env or two_device_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if (proc_marker(epath.Path(workdir), proc.pid) if proc_marker
        else marker(epath.Path(workdir))):
      if not proc_marker:
        time.sleep(rng.uniform(0.0, 0.3))
      break
    time.sleep(0.02 if proc_marker else 0.05)
  finished = proc.poll() is not None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return not finished


def checkpoint_params(workdir, stage) -> list[np.ndarray]:
  """The params saved under checkpoints/<stage> (shapes from the checkpoint's own model
  config), as numpy leaves."""
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  cfg, _ = loading.model_config_of(str(epath.Path(workdir) / "checkpoints" / stage))
  _, abstract = abstract_params(cfg)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, params_lib.shardings(mesh, abstract))
  with ckpt_lib.CheckpointManager(epath.Path(workdir) / "checkpoints" / stage) as m:
    return [np.asarray(x) for x in jax.tree.leaves(m.restore_params(0, target))]


def read_json(workdir, name):
  return json.loads((epath.Path(workdir) / name).read_text())


def read_jsonl(workdir, name) -> list:
  return [json.loads(line) for line in (epath.Path(workdir) / name).read_text().splitlines()]


def metrics(workdir, stage) -> dict:
  """<stage>/metrics.json without its timings."""
  m = read_json(workdir, f"{stage}/metrics.json")
  m.pop("times", None)
  for k in _TIMING_COUNTS + _PROCESS_COUNTS:
    m.get("counts", {}).pop(k, None)
  return m
