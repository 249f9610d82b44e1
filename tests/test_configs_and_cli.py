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
  bad.write_text("model_config.preset = 'tiny'\nthis is not gin\n")
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
