import glob
import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "tpu_scripts", "*.sh")))


def _run(*args):
  return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _commands(stdout):
  return [shlex.split(l[2:]) for l in stdout.splitlines() if l.startswith("+ ")]


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is installed by tpu_scripts/install.sh (apt); absent here")
def test_shellcheck_clean():
  out = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS
                                    if not s.endswith("common.sh")])
def test_help(script):
  out = _run(f"tpu_scripts/{script}", "--help")
  assert out.returncode == 0 and "Usage: tpu_scripts/" in out.stdout


def test_missing_flag_and_unknown_argument_fail_clearly():
  out = _run("tpu_scripts/create.sh", "--name", "x", "--dry-run")
  assert out.returncode == 2 and "--zone" in out.stderr
  out = _run("tpu_scripts/create.sh", "--frobnicate")
  assert out.returncode == 2 and "unknown argument --frobnicate" in out.stderr


def test_v5e_8_single_host_dry_run():
  out = _run("tpu_scripts/create.sh", "--name", "rest", "--zone", "us-west4-a", "--type",
             "v5e-8", "--spot", "--dry-run")
  assert out.returncode == 0, out.stderr
  (cmd,) = _commands(out.stdout)
  assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert cmd[cmd.index("--accelerator-type") + 1] == "v5litepod-8"
  assert cmd[cmd.index("--version") + 1] == "v2-alpha-tpuv5-lite"
  assert "--spot" in cmd and cmd[cmd.index("--zone") + 1] == "us-west4-a"


def test_v4_32_pod_dry_run_create_setup_launch():
  out = _run("tpu_scripts/create.sh", "--name", "pod", "--zone", "us-central2-b", "--type",
             "v4-32", "--queued", "--dry-run")
  (cmd,) = _commands(out.stdout)
  assert cmd[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert cmd[cmd.index("--accelerator-type") + 1] == "v4-32"
  assert cmd[cmd.index("--node-id") + 1] == "pod"
  out = _run("tpu_scripts/setup.sh", "--name", "pod", "--zone", "us-central2-b", "--dry-run")
  cmds = _commands(out.stdout)
  assert any(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in c
             for c in cmds)
  assert any("install.sh" in " ".join(c) and "--worker=all" in c for c in cmds)
  out = _run("tpu_scripts/launch.sh", "--name", "pod", "--zone", "us-central2-b", "--gin_file",
             "runs/rest_em_math.gin", "--workdir", "gs://bucket/run1", "--gin",
             "LoopConfig.iterations=2", "--dry-run")
  (cmd,) = _commands(out.stdout)
  assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in cmd
  remote = cmd[cmd.index("--command") + 1]
  assert "rest-jax run --gin_file=runs/rest_em_math.gin" in remote
  assert "gs://bucket/run1" in remote and "--gin.LoopConfig.iterations=2" in remote
  assert "logs/worker-$(hostname).log" in remote


def test_watch_dry_run_shows_recovery():
  out = _run("tpu_scripts/watch.sh", "--name", "pod", "--zone", "z", "--type", "v4-32",
             "--gin_file", "runs/x.gin", "--workdir", "gs://b/w", "--once", "--dry-run")
  assert out.returncode == 0, out.stderr
  verbs = [c[3:5] for c in _commands(out.stdout) if c[:3] == ["gcloud", "compute", "tpus"]]
  assert ["tpu-vm", "delete"] in verbs and ["tpu-vm", "create"] in verbs
  assert verbs[-1] == ["tpu-vm", "ssh"]


def test_watch_relaunches_the_same_config_and_requeues():
  """The relaunch after a preemption carries every --gin binding (a run resumed with another
  config is refused), and a queued resource is deleted before it is queued again."""
  out = _run("tpu_scripts/watch.sh", "--name", "pod", "--zone", "z", "--type", "v4-32",
             "--gin_file", "runs/x.gin", "--workdir", "gs://b/w", "--queued",
             "--gin", "BASE_MODEL='qwen3-1.7b'", "--gin", "MESH=(1, -1, 1)",
             "--once", "--dry-run")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  verbs = [c[3:5] for c in cmds if c[:3] == ["gcloud", "compute", "tpus"]]
  assert verbs.index(["queued-resources", "delete"]) < verbs.index(["queued-resources", "create"])
  remote = cmds[-1][cmds[-1].index("--command") + 1]
  assert "--gin.BASE_MODEL=" in remote and "qwen3-1.7b" in remote
  assert "--gin.MESH=" in remote and "gs://b/w" in remote
