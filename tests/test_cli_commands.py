"""The commands' contract with a user: gin flags honoured or refused, never ignored; the
project's own errors as one line on stderr with exit status 2; `verify`'s exit status and
`--output`. The commands run in-process through `rest_jax.cli.main`."""

import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest

from rest_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEMS = [
    {"id": "p1", "prompt": "What is 2 + 3?", "answer": "5"},
    {"id": "p2", "prompt": "What is 7 * 6?", "answer": "42"},
    {"id": "p3", "prompt": "What is 10 - 4?", "answer": "6"},
]


def _write_jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def _takes_gin(name: str) -> bool:
  parser = argparse.ArgumentParser()
  importlib.import_module(cli.COMMANDS[name][0]).add_arguments(parser)
  return "--gin_file" in parser._option_string_actions  # pylint: disable=protected-access


def _no_traceback_one_error(err: str, name: str) -> str:
  assert "Traceback" not in err and "In call to configurable" not in err, err
  lines = [line for line in err.splitlines() if line.startswith(f"rest-jax {name}:")]
  assert len(lines) == 1, err
  return lines[0]


# --- 1. gin flags are honoured or refused -------------------------------------------------

def test_tasks_show_previews_a_user_jsonl_task(tmp_path, capsys):
  path = _write_jsonl(tmp_path / "my.jsonl", PROBLEMS)
  rc = cli.main(["tasks", "show", "jsonl", f"--gin.jsonl_task.path='{path}'",
                 "--gin.jsonl_task.num_test=0", "-n", "5"])
  out, err = capsys.readouterr()
  assert rc == 0, err
  for p in PROBLEMS:
    assert f"=== {p['id']} ===" in out and p["prompt"] in out
  assert "3 problems in split 'train'" in out


def test_tasks_take_a_gin_file(tmp_path, capsys):
  path = _write_jsonl(tmp_path / "my.jsonl", PROBLEMS)
  gin_file = tmp_path / "mine.gin"
  gin_file.write_text(f"jsonl_task.path = '{path}'\njsonl_task.num_test = 1\n")
  assert cli.main(["tasks", "show", "jsonl", f"--gin_file={gin_file}", "--split", "test"]) == 0
  out = capsys.readouterr().out
  assert "1 problems in split 'test'" in out and out.count("=== p") == 1
  assert cli.main(["tasks", f"--gin_file={gin_file}"]) == 0
  row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("jsonl ")]
  assert row and "train=2, test=1" in row[0]


def test_tasks_show_names_a_bad_line_with_its_number(tmp_path, capsys):
  path = _write_jsonl(tmp_path / "my.jsonl", [PROBLEMS[0], '{"id": "p2", "prompt": "x"}',
                                              "not json", PROBLEMS[2]])
  rc = cli.main(["tasks", "show", "jsonl", f"--gin.jsonl_task.path='{path}'",
                 "--gin.jsonl_task.num_test=0"])
  out, err = capsys.readouterr()
  assert rc == 2 and "Traceback" not in err and "===" not in out
  assert err.startswith("rest-jax tasks show: 2 malformed line(s)")
  assert f"{path}:2: expected exactly one of 'answer'" in err
  assert f"{path}:3: not valid JSON" in err


def test_tasks_without_a_problems_file_say_so(capsys):
  assert cli.main(["tasks", "show", "jsonl"]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, "tasks show")
  assert "no problems file; set jsonl_task.path" in line
  assert cli.main(["tasks", "show", "nope"]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, "tasks show")
  assert line.startswith("rest-jax tasks show: unknown task 'nope'; registered tasks: [")


@pytest.mark.parametrize("name", ["sample", "logprobs", "export", "train-rm"])
def test_commands_without_gin_flags_refuse_them(name, capsys):
  assert not _takes_gin(name)
  assert cli.main([name, "--gin.model_config.preset='tiny'"]) == 2
  err = capsys.readouterr().err
  line = _no_traceback_one_error(err, name)
  assert "takes no gin flags" in line and "--gin.model_config.preset" in line
  assert cli.main([name, "--gin_file=runs/demo.gin"]) == 2
  assert "takes no gin flags (got --gin_file=runs/demo.gin)" in capsys.readouterr().err


def test_every_command_takes_or_refuses_gin_flags(capsys):
  for name in cli.COMMANDS:
    if not _takes_gin(name):
      assert cli.main([name, "--gin.x=1"]) == 2, name
      assert "takes no gin flags" in capsys.readouterr().err, name


def test_verify_task_honours_gin(tmp_path, capsys):
  problems = _write_jsonl(tmp_path / "my.jsonl", PROBLEMS)
  inp = _write_jsonl(tmp_path / "in.jsonl", [
      {"id": "a", "completion": "The answer is 5.", "prompt_id": "p1"},
      {"id": "b", "completion": "The answer is 41.", "prompt_id": "p2"}])
  rc = cli.main(["verify", "--input", str(inp), "--task", "jsonl", "--workers", "1",
                 f"--gin.jsonl_task.path='{problems}'", "--gin.jsonl_task.num_test=1"])
  out, err = capsys.readouterr()
  assert rc == 0, err
  assert [json.loads(line)["verdict"] for line in out.splitlines()] == ["pass", "fail"]


@pytest.mark.parametrize("task, message", [
    ("nope", "--task nope: unknown task; registered tasks: ["),
    ("jsonl", "--task jsonl: jsonl task: no problems file; set jsonl_task.path"),
])
def test_verify_bad_task_is_one_line(task, message, tmp_path, capsys):
  inp = _write_jsonl(tmp_path / "in.jsonl", [{"completion": "5", "prompt_id": "p1"}])
  assert cli.main(["verify", "--input", str(inp), "--task", task]) == 2
  assert message in _no_traceback_one_error(capsys.readouterr().err, "verify")


def test_verify_refuses_gin_flags_without_a_task(tmp_path, capsys):
  inp = _write_jsonl(tmp_path / "in.jsonl", [{"completion": "5", "answer": "5"}])
  assert cli.main(["verify", "--input", str(inp), "--gin.jsonl_task.num_test=1"]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, "verify")
  assert "no --task was given" in line


# --- 2. verify: exit status, --output ------------------------------------------------------

def test_verify_exits_non_zero_on_malformed_lines_and_keeps_every_verdict(tmp_path, capsys):
  inp = _write_jsonl(tmp_path / "in.jsonl", [
      {"id": "ok", "completion": "#### 4", "answer": "4"},
      "not json",
      {"id": "no_ref", "completion": "#### 4"},
      {"id": "wrong", "completion": "#### 5", "answer": "4"}])
  rc = cli.main(["verify", "--input", str(inp), "--workers", "1"])
  out, err = capsys.readouterr()
  assert rc == 2
  rows = [json.loads(line) for line in out.splitlines()]
  assert [(r["id"], r["verdict"]) for r in rows] == [
      ("ok", "pass"), (2, "error"), ("no_ref", "error"), ("wrong", "fail")]
  line = _no_traceback_one_error(err, "verify")
  assert f"2 of 4 lines of {inp} are malformed" in line and '"completion"' in line


def test_verify_writes_output_file(tmp_path, capsys):
  inp = _write_jsonl(tmp_path / "in.jsonl", [
      {"id": "ok", "completion": "#### 4", "answer": "4"},
      {"id": "wrong", "completion": "#### 5", "answer": "4"}])
  dest = tmp_path / "verdicts.jsonl"
  assert cli.main(["verify", "--input", str(inp), "--workers", "1", "--output", str(dest)]) == 0
  out, err = capsys.readouterr()
  assert out == ""
  assert [json.loads(x)["verdict"] for x in dest.read_text().splitlines()] == ["pass", "fail"]
  assert json.loads(err.strip().splitlines()[-1])["items"] == 2
  # An output that cannot be written: one line naming it.
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  assert cli.main(["verify", "--input", str(inp), "--output", str(blocker / "v.jsonl")]) == 2
  assert str(blocker / "v.jsonl") in _no_traceback_one_error(capsys.readouterr().err, "verify")


def test_verify_missing_input(tmp_path, capsys):
  assert cli.main(["verify", "--input", str(tmp_path / "nope.jsonl")]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, "verify")
  assert "nope.jsonl: no such file" in line


# --- 4. the project's own errors: one line, exit 2 -----------------------------------------

def _model_args(name, model, tmp_path):
  if name == "sample":
    return ["--model", model, "--prompt", "hi", "--no_progress"]
  if name == "logprobs":
    return ["--model", model, "--text", "hi"]
  if name == "export":
    return ["--checkpoint", model, "--out", str(tmp_path / "out")]
  if name == "train-rm":
    data = _write_jsonl(tmp_path / "rm.jsonl", [
        {"prompt": "1+1=", "completion": "2", "reward": 1},
        {"prompt": "1+1=", "completion": "3", "reward": 0}])
    return ["--model", model, "--input", str(data), "--output", str(tmp_path / "rm")]
  raise AssertionError(name)


@pytest.mark.parametrize("name", ["sample", "logprobs", "export", "train-rm"])
def test_missing_model_is_one_line(name, tmp_path, capsys):
  missing = str(tmp_path / "missing.gguf")
  assert cli.main([name, *_model_args(name, missing, tmp_path)]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, name)
  assert missing in line and "no such file" in line


@pytest.mark.parametrize("name", ["sample", "logprobs", "export", "train-rm"])
def test_corrupt_model_is_one_line(name, tmp_path, capsys):
  corrupt = tmp_path / "corrupt.gguf"
  corrupt.write_bytes(b"garbage, not a model")
  assert cli.main([name, *_model_args(name, str(corrupt), tmp_path)]) == 2
  line = _no_traceback_one_error(capsys.readouterr().err, name)
  assert str(corrupt) in line and "not a GGUF file" in line


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "bad sampling parameters: temperature must be >= 0"),
    (["--top_p", "0"], "bad sampling parameters: top_p must be in (0, 1]"),
    (["--max_new_tokens", "0"], "bad sampling parameters: max_new_tokens must be >= 1"),
    (["-k", "0"], "--num_samples must be >= 1"),
    (["--mesh", "1,2"], "--mesh takes three comma-separated sizes"),
])
def test_sample_bad_parameters_are_one_line(flags, message, tmp_path, capsys):
  assert cli.main(["sample", "--model", "tiny", "--prompt", "hi", *flags]) == 2
  assert message in _no_traceback_one_error(capsys.readouterr().err, "sample")


def test_sample_unknown_dtype_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sample", "--model", "tiny", "--prompt", "hi", "--dtype", "foo"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "--dtype: invalid choice: 'foo'" in err and "Traceback" not in err


def test_run_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  workdir = blocker / "wd"
  out = subprocess.run([sys.executable, "-m", "rest_jax.cli", "run", "--gin_file=runs/demo.gin",
                        f"--gin.WORKDIR='{workdir}'"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  line = _no_traceback_one_error(out.stderr, "run")
  assert str(workdir) in line and "Not a directory" in line


def test_a_bug_keeps_its_traceback(monkeypatch):
  from rest_jax.commands import tasks

  def broken(args):
    raise RuntimeError("a bug")
  monkeypatch.setattr(tasks, "main", broken)
  with pytest.raises(RuntimeError, match="a bug"):
    cli.main(["tasks"])


@pytest.mark.parametrize("error,status", [
    ("rest_jax.runtime.preemption.Preempted", 143),
    ("rest_jax.runtime.distributed.DistributedError", 1),
    ("rest_jax.tasks.base.TaskDataError", 2),
    ("rest_jax.commands.errors.CommandError", 2)])
def test_one_mapping_from_errors_to_exit_statuses(monkeypatch, capsys, error, status):
  """Every command ends through cli's mapping: one line naming the command, and the status of
  the error's kind (a preemption's 143, a process group's 1, bad input's 2)."""
  import importlib
  from rest_jax.commands import tasks
  module, name = error.rsplit(".", 1)
  kind = getattr(importlib.import_module(module), name)

  def fails(args):
    raise kind("what went wrong\nIn call to configurable 'x'")
  monkeypatch.setattr(tasks, "main", fails)
  assert cli.main(["tasks"]) == status
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("rest-jax tasks: "), err
  assert "what went wrong" in err and "In call to configurable" not in err


def test_a_cpu_run_logs_nothing_of_the_tpu_runtime(tmp_path):
  """With libtpu installed (the test extra) and no TPU, jax would try the TPU backend and
  libtpu would log about hostnames and accelerator types: a command on such a machine asks
  for the CPU backend, unless JAX_PLATFORMS says otherwise."""
  import importlib.util
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-m", "rest_jax.cli", "sample", "--model", "tiny",
                        "--prompt", "hi", "--max_new_tokens", "2", "--no_progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "tpu" not in (out.stdout + out.stderr).lower(), out.stderr[-2000:]
  assert "INFO rest_jax" in out.stderr        # our own logs stay
  if importlib.util.find_spec("libtpu") is not None:   # what would have spoken: check it can
    env["JAX_PLATFORMS"] = ""
    noisy = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert "tpu" in noisy.stderr.lower()
