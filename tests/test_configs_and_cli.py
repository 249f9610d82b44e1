import glob
import os
import subprocess
import sys

import pytest

from rest_jax import cli
from rest_jax.commands import gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.gin"), recursive=True))


def test_there_are_configs_of_each_kind():
  kinds = {os.path.basename(os.path.dirname(f)) for f in GIN_FILES}
  assert {"models", "runs"} <= kinds


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_gin_file_parses(path):
  cli.gin_flags.import_configurables()
  gin_flags.parse([path], [])


def _cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "rest_jax.cli", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
  out = _cli("--help")
  assert out.returncode == 0
  for name in cli.COMMANDS:
    assert name in out.stdout


def test_unknown_command_fails():
  out = _cli("frobnicate")
  assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


def test_malformed_gin_file_reports_file_and_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("LoopConfig.model = 'tiny'\nthis is not gin\n")
  out = _cli("run", f"--gin_file={bad}", "--gin.WORKDIR='/tmp/x'")
  assert out.returncode == 2
  assert "gin config error" in out.stderr and "bad.gin" in out.stderr and "2" in out.stderr
  assert "Traceback" not in out.stderr


def test_unknown_binding_is_an_error(tmp_path):
  out = _cli("run", "--gin_file=runs/demo.gin", f"--gin.WORKDIR='{tmp_path}'",
             "--gin.no_such_thing.x=1")
  assert out.returncode == 2 and "no_such_thing" in out.stderr
  assert "Traceback" not in out.stderr


def test_missing_gin_file_is_an_error():
  out = _cli("run", "--gin_file=runs/nope.gin")
  assert out.returncode == 2 and "nope.gin" in out.stderr and "not found" in out.stderr


def test_split_gin_args():
  rest, bindings = gin_flags.split_gin_args(
      ["--gin_file=a.gin", "--gin.WORKDIR='/w'", "--gin.run.steps", "3", "x"])
  assert rest == ["--gin_file=a.gin", "x"]
  assert bindings == ["WORKDIR = '/w'", "run.steps = 3"]


def test_run_writes_resolved_config_and_reports_a_bad_model(tmp_path):
  workdir = tmp_path / "wd"
  out = _cli("run", "--gin_file=runs/demo.gin", f"--gin.WORKDIR='{workdir}'",
             "--gin.LoopConfig.model='no-such-model'", "--gin.create_mesh.shape=(2, 2, 2)")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "no-such-model" in out.stderr and "Traceback" not in out.stderr
  config = (workdir / "config.gin").read_text()
  assert "LoopConfig.model = 'no-such-model'" in config
  assert "create_mesh.shape = (2, 2, 2)" in config


RUN_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "runs", "*.gin")))
# What the templates require; values that parse and load offline.
MACROS = ["WORKDIR='/tmp/unused'", "BASE_MODEL='tiny'", "MESH=(1, -1, 1)",
          "REWARD_MODEL='tiny'"]
# Read by `rest-jax run` before the loop starts (commands/run.py -> loop/run.py).
READ_BY_THE_COMMAND = {"run.workdir"}


def _bindings(config_str: str) -> dict[str, str]:
  """{`configurable.parameter`: value} of every binding in a gin config string (scopes kept)."""
  out = {}
  for line in config_str.splitlines():
    name, _, value = line.partition("=")
    name = name.strip()
    if value and "." in name and not line.startswith((" ", "#", "import", "include")):
      out[name] = value.strip()
  return out


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_binding_of_a_shipped_run_is_read(path, offline):
  """Each run file's bindings, once the run's configurables are called as the loop calls them,
  are in gin's operative config: a binding nothing reads (a `model_config.dtype`
  that no code called) fails here."""
  import gin
  from rest_jax.loop.rest import ReSTConfig
  from rest_jax.loop.rest_em import LoopConfig
  from rest_jax.models import abstract_params, PRESETS
  from rest_jax.rewards.training import RewardTrainConfig
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.sampling.sampler import Sampler
  from rest_jax.tasks import get_task
  from rest_jax.tokenizers import ByteTokenizer
  from rest_jax.training import step as training
  from rest_jax.training.improve import ImproveConfig
  from rest_jax.verifiers import SandboxConfig
  task = "humaneval" if "code" in os.path.basename(path) else "gsm8k"
  gin_flags.import_configurables()
  gin_flags.parse([path], [*MACROS, f"TASK='{task}'"])
  bound = _bindings(gin.config_str())
  loop = LoopConfig(workdir="unused")
  ImproveConfig()
  SandboxConfig()   # as the loop's VerifierPool() makes it
  mesh = mesh_lib.create_mesh()
  scopes = {b.split("/")[0] for b in bound if "/" in b.split(".")[0]}
  for scope in [None, *scopes]:
    with gin.config_scope(scope):
      training.make_optimizer()
  if loop.mode == "rest":
    ReSTConfig()
    RewardTrainConfig()
  cfg = PRESETS["tiny"]
  get_task(loop.task, tokenizer=ByteTokenizer(vocab_size=cfg.vocab_size))
  Sampler(abstract_params(cfg)[0], cfg, ByteTokenizer(vocab_size=cfg.vocab_size), mesh,
          num_slots=loop.sampler_slots)
  operative_str = gin.operative_config_str()
  operative = set(_bindings(operative_str))
  # gin leaves a binding to a configurable (`@PromptFormat()`) out of the operative config:
  # it counts as read when the configurable it names was called.
  called = lambda ref: f"# Parameters for {ref.lstrip('@').split('(')[0]}:" in operative_str
  unread = {b for b, v in bound.items() if b not in operative and b not in READ_BY_THE_COMMAND
            and not (v.startswith("@") and called(v))}
  assert not unread, sorted(unread)
