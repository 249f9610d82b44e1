"""The loop as a real multi-process JAX job: 2 CPU processes x 4 devices joined with gloo.

Checks that 2 processes x 4 devices and 1 process x 8 devices give the same kept samples,
metrics and final params; that SIGTERM to one process stops both at a safe point; that a
killed peer makes the survivor fail within a bounded time with a clear message; and that
rerunning after each resumes to the results of an uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

import run_helpers as rh

SMALL = [
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=1", "--gin.LoopConfig.num_train_prompts=32",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.num_val_prompts=8",
    "--gin.LoopConfig.num_samples=4", "--gin.LoopConfig.eval_samples=2",
    "--gin.LoopConfig.eval_ks=(1, 2)", "--gin.LoopConfig.prompts_per_shard=8",
    "--gin.LoopConfig.base_sft_steps=16", "--gin.LoopConfig.max_new_tokens=32",
    "--gin.LoopConfig.sampler_slots=16", "--gin.ImproveConfig.steps=8",
    "--gin.ImproveConfig.checkpoint_every=4",
    "--gin.LoopConfig.sft_baseline=False", "--gin.create_mesh.shape=(1, -1, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]
STAGES = ("iter_000", "iter_001")


_CACHE = epath.Path(os.environ.get("TMPDIR", "/tmp")) / f"rest_jax_test_cache_{os.getuid()}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, nproc: int, devices: int, stdout=subprocess.PIPE, extra=(),
            hosts_dir=None) -> list:
  """hosts_dir: each process gets HOME and TMPDIR of its own under it, as TPU VMs have."""
  port = _free_port()
  procs = []
  for i in range(nproc):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", REST_JAX_BARRIER_TIMEOUT="120",
               # Reruns reuse the compiled programs (the runs here are mostly compilation).
               JAX_COMPILATION_CACHE_DIR=str(_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if hosts_dir is not None:
      home = epath.Path(hosts_dir) / f"host_{i}"
      (home / "tmp").mkdir(parents=True, exist_ok=True)
      env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    cmd = [sys.executable, "-m", "rest_jax.cli", "run", *SMALL, *extra,
           f"--gin.WORKDIR='{workdir}'"]
    if nproc > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={nproc}",
              f"--process_id={i}", "--heartbeat_timeout=15"]
    procs.append(subprocess.Popen(cmd, cwd=rh.REPO, env=env, stdout=stdout,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def _wait(procs, timeout=900) -> list[tuple[int, str]]:
  out = []
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    out.append((p.returncode, err))
  return out


def _run(workdir, nproc, devices, extra=(), hosts_dir=None):
  results = _wait(_launch(workdir, nproc, devices, extra=extra, hosts_dir=hosts_dir))
  for i, (rc, err) in enumerate(results):
    assert rc == 0, f"process {i}: exit {rc}\n{err[-3000:]}"


def _kept(workdir):
  rows = [json.loads(line) for line in
          (epath.Path(workdir) / "iter_001" / "kept.jsonl").read_text().splitlines()]
  for r in rows:  # a sum of float32 log-probabilities: its last bits follow the mesh
    r["logprob_sum"] = round(r["logprob_sum"], 3)
  return rows


def _verified_share(workdir) -> float:
  """The share of Generate's completions that process 0's verifier pool checked."""
  counts = rh.read_json(workdir, "iter_001/counts.json")["counts"]
  return counts["verified"] / counts["completions"]


def _assert_same_run(a, b, atol):
  assert _kept(a) == _kept(b)
  for stage in STAGES:
    assert rh.metrics(a, stage) == rh.metrics(b, stage), stage
  for x, y in zip(rh.checkpoint_params(a, "iter_001"), rh.checkpoint_params(b, "iter_001")):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


# What a run writes; none of it may be on a host's own disk when WORKDIR is on a bucket.
_RUN_FILES = ("shard-", "kept", "metrics", "state.json", "config.gin", "report", "tfevents",
              "counts.json", "_CHECKPOINT_METADATA", "ocdbt")


def _run_files_on_local_disk(hosts_dir) -> list[str]:
  found = []
  for root, _, names in os.walk(hosts_dir):
    found += [os.path.join(root, n) for n in names if any(k in n for k in _RUN_FILES)]
  return found


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, gcs):
  """2 processes, each with its own HOME and TMPDIR, WORKDIR on gs:// (the emulator)."""
  workdir = epath.Path(gcs.make_bucket("two-by-four")) / "run"
  hosts = tmp_path_factory.mktemp("two_by_four_hosts")
  _run(workdir, 2, 4, hosts_dir=hosts)
  assert _run_files_on_local_disk(hosts) == []
  return workdir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_by_eight")
  _run(workdir, 1, 8)
  return workdir


def test_two_processes_equal_one_process(two_processes, one_process):
  """per_host placement, WORKDIR on gs://: each process writes its own shards to the bucket
  and process 0 reads them back from there."""
  one = one_process
  wd = epath.Path(two_processes)
  # Each process wrote its own shards; process 0 alone wrote state and reports.
  assert sorted(p.name for p in (wd / "iter_001" / "samples").iterdir()) == [
      f"shard-{i:05d}-of-00004.jsonl" for i in range(4)]
  assert json.loads((wd / "state.json").read_text())["finished"]
  assert (wd / "report.md").exists()
  # The same global programs run over 8 devices either way; only the cross-process
  # all-reduce (gloo) may sum in another order. Adam divides by sqrt(v), so on near-zero
  # gradients that last-bit noise can move a weight by a fraction of the learning rate
  # (1e-3) per step (see test_train_step.py): seen up to 1.3e-5 after 24 steps.
  _assert_same_run(two_processes, one, atol=2e-4)
  # Each process verified its own shards' completions, on its own CPUs.
  assert _verified_share(one) == 1.0 and _verified_share(two_processes) == 0.5


def test_global_sample_placement_equals_one_process(one_process, tmp_path, gcs):
  """Both processes sample every shard together on the global mesh (their schedulers in
  lockstep), each verifies half of its completions while the next shard samples, process 0
  gathers the verdicts and writes it: the run is that of one process. WORKDIR is on gs://,
  and each process has a disk of its own that the run leaves nothing on."""
  workdir = epath.Path(gcs.make_bucket("global")) / "run"
  results = _wait(_launch(workdir, 2, 4, extra=["--gin.LoopConfig.sample_placement='global'",
                                                 "--gin.LoopConfig.verify_overlap=True"],
                          hosts_dir=tmp_path))
  for i, (rc, err) in enumerate(results):
    assert rc == 0, f"process {i}: exit {rc}\n{err[-3000:]}"
  assert _run_files_on_local_disk(tmp_path) == []
  assert "Generate runs on the global mesh, all processes together" in results[0][1]
  _assert_same_run(workdir, one_process, atol=2e-4)
  # Every shard was sampled by both together; each verified half of its completions.
  assert _verified_share(workdir) == 0.5


def _start_and_wait_for(workdir, marker, timeout=600):
  procs = _launch(workdir, 2, 4, stdout=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if marker(epath.Path(workdir)):
      return procs
    time.sleep(0.05)
  for p in procs:
    p.kill()
  pytest.fail("the run ended or stalled before reaching the marker")


def _first_train_shard(wd):
  return (wd / "iter_001" / "samples" / "shard-00000-of-00004.jsonl").exists()


def _improve_checkpoint(wd):
  d = wd / "checkpoints" / "train_iter_001"
  return d.exists() and any(p.name.isdigit() for p in d.iterdir())


def test_sigterm_and_a_killed_peer_stop_the_job_and_reruns_resume(two_processes, tmp_path):
  workdir = tmp_path / "interrupted"
  # SIGTERM (a preemption notice) to one host, mid-Generate: both stop at the same safe point.
  procs = _start_and_wait_for(workdir, _first_train_shard)
  procs[1].send_signal(signal.SIGTERM)
  for rc, err in _wait(procs, timeout=300):
    assert rc == 143, err[-2000:]
    assert "stopped at a safe point after SIGTERM" in err
  assert not json.loads((workdir / "state.json").read_text()).get("finished")
  assert _first_train_shard(workdir)   # the finished shards were kept

  # The rerun resumes; this time one process dies (SIGKILL) mid-Improve.
  procs = _start_and_wait_for(workdir, _improve_checkpoint)
  t0 = time.time()
  procs[1].send_signal(signal.SIGKILL)
  (rc0, err0), _ = _wait(procs, timeout=300)
  waited = time.time() - t0
  assert rc0 != 0
  # Bounded by the heartbeat timeout (15 s) or, at a barrier, its timeout (120 s).
  assert waited < 200, waited
  assert ("another process has probably died" in err0 or "another task died" in err0), (
      err0[-2000:])

  # Rerunning both processes finishes with the results of an uninterrupted run.
  _run(workdir, 2, 4)
  _assert_same_run(workdir, two_processes, atol=0)


def test_a_missing_peer_fails_start_up_with_a_clear_message(tmp_path):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "rest_jax.cli", "run", *SMALL, f"--gin.WORKDIR='{tmp_path}'",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=0",
         "--init_timeout=5"]
  t0 = time.time()
  out = subprocess.run(cmd, cwd=rh.REPO, env=env, capture_output=True, text=True, timeout=120)
  # jax ends the process itself (an abort) once the start-up deadline passes; the message
  # naming the coordinator and the absent process comes just before.
  assert out.returncode != 0, out.stderr[-2000:]
  assert time.time() - t0 < 90
  assert (f"process group did not start within 5s: coordinator 127.0.0.1:{port}, expected 2 "
          "processes, this is process 0; process 1 did not connect") in out.stderr, (
              out.stderr[-2000:])
  # Half a set of flags is refused before anything starts.
  out = subprocess.run([sys.executable, "-m", "rest_jax.cli", "run", *SMALL,
                        f"--gin.WORKDIR='{tmp_path}'", "--num_processes=2"], cwd=rh.REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "--process_id" in out.stderr, out.stderr[-2000:]


_ALLGATHER = """
import sys
from rest_jax.runtime import distributed as dist
dist.initialize(dist.ProcessGroup(coordinator_address=sys.argv[1], num_processes=2,
                                  process_id=int(sys.argv[2]), init_timeout_s=60))
import jax.numpy as jnp
from jax.experimental import multihost_utils
print("gathered", multihost_utils.process_allgather(jnp.ones(2)).shape)
"""


def test_stdout_carries_only_the_programs_own_lines():
  """Gloo announces its peers on standard output from native code at the first collective;
  with CPU processes joined by gloo, those lines go to stderr and stdout keeps ours."""
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen([sys.executable, "-c", _ALLGATHER, address, str(i)], cwd=rh.REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.splitlines() == ["gathered (2, 2)"], out
  assert any("[Gloo]" in err for _, err in outs)   # still said, on stderr
