"""`rest-jax eval`: a model's accuracy outside a run, and a paired comparison of two models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

import run_helpers as rh
from rest_jax import cli
from rest_jax.loop import evaluation

# A tiny run: the base (a short SFT of the tiny model) and one ReST-EM iteration, evaluated on
# 12 held-out problems x 2 samples in two shards (8 + 4 problems).
RUN = [
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=1", "--gin.LoopConfig.sft_baseline=False",
    "--gin.LoopConfig.num_train_prompts=32", "--gin.LoopConfig.num_samples=4",
    "--gin.LoopConfig.num_eval_prompts=12", "--gin.LoopConfig.num_eval_train_prompts=4",
    "--gin.LoopConfig.num_val_prompts=8",
    "--gin.LoopConfig.eval_samples=2", "--gin.LoopConfig.eval_ks=(1, 2)",
    "--gin.LoopConfig.prompts_per_shard=8", "--gin.LoopConfig.base_sft_steps=30",
    "--gin.LoopConfig.max_new_tokens=24", "--gin.LoopConfig.sampler_slots=16",
    "--gin.ImproveConfig.steps=4", "--gin.create_mesh.shape=(1, 2, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]
EVAL_DIRS = ("eval_test", "eval_test_greedy")


def eval_cmd(workdir, output, *extra):
  """`rest-jax eval` of the run's iteration 1 against its base, with the run's own config."""
  wd = epath.Path(workdir)
  return [sys.executable, "-m", "rest_jax.cli", "eval",
          f"--model={wd / 'checkpoints' / 'iter_001'}",
          f"--baseline={wd / 'checkpoints' / 'base'}",
          f"--gin_file={wd / 'config.gin'}", f"--output={output}", *extra]


def run_eval(workdir, output, *extra):
  return subprocess.run(eval_cmd(workdir, output, *extra), cwd=rh.REPO, capture_output=True,
                        text=True, env=rh.two_device_env(), timeout=600)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """(workdir of a finished run, --output of `rest-jax eval` on it, the eval's stdout)."""
  workdir = tmp_path_factory.mktemp("run")
  rh.run(RUN, workdir)
  output = tmp_path_factory.mktemp("eval") / "out"
  out = run_eval(workdir, output)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, output, out.stdout


def test_checkpoints_evaluated_give_exactly_the_figures_the_run_recorded(evaluated):
  workdir, output, stdout = evaluated
  metrics = json.loads((output / "metrics.json").read_text())
  for role, stage in (("model", "iter_001"), ("baseline", "iter_000")):
    recorded = rh.read_json(workdir, f"{stage}/metrics.json")["heldout"]
    assert metrics[role]["metrics"] == recorded, role
    # Every completion is the run's own, byte for byte (same seed, keys, shards, mesh).
    for sub, theirs in zip(EVAL_DIRS, ("eval_heldout", "eval_heldout_greedy")):
      mine = sorted((output / role / sub).iterdir())
      assert [p.name for p in mine] == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
      for p in mine:
        assert p.read_text() == (workdir / stage / theirs / p.name).read_text(), (role, p)
  # The paired differences are the differences of the two models' figures.
  model, base = metrics["model"]["metrics"], metrics["baseline"]["metrics"]
  assert set(metrics["paired"]) == {"greedy_pass@1", "pass@1", "pass@2", "maj@2"}
  for name, d in metrics["paired"].items():
    assert d["difference"] == pytest.approx(model[name] - base[name], abs=1e-12)
    lo, hi = d["ci95"]
    assert lo <= d["difference"] <= hi
    assert d["excludes_zero"] == (lo > 0 or hi < 0)
  lines = stdout.splitlines()
  assert lines[0].startswith("arithmetic/test: 12 problems, 2 sampled completions each (T = 1.0")
  table = {line.split("  ")[0]: line for line in lines}
  assert {"metric (%)", "greedy pass@1", "pass@1", "pass@2", "maj@2"} <= set(table)
  assert f"{100 * model['pass@1']:.1f} [" in table["pass@1"]
  verdict = [line for line in lines if line.startswith("pass@1: model - baseline = ")]
  assert len(verdict) == 1 and ("excludes 0" in verdict[0] or "includes 0" in verdict[0])


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_runs_train_and_val_prompts_give_its_recorded_figures(evaluated, tmp_path, split):
  """`--split train` is the run's training prompts without a human solution, `--split val` its
  validation prompts (loop/splits.py), not the first problems of the task's train split."""
  workdir = epath.Path(evaluated[0])
  out = subprocess.run(
      [sys.executable, "-m", "rest_jax.cli", "eval",
       f"--model={workdir / 'checkpoints' / 'iter_001'}", f"--gin_file={workdir / 'config.gin'}",
       f"--output={tmp_path / 'out'}", f"--split={split}"],
      cwd=rh.REPO, capture_output=True, text=True, env=rh.two_device_env(), timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert metrics["model"]["metrics"] == rh.read_json(workdir, "iter_001/metrics.json")[split]
  assert metrics["problems"] == {"train": 4, "val": 8}[split]


def test_rerun_resumes_from_finished_shards_and_refuses_other_settings(evaluated):
  workdir, output, stdout = evaluated
  before = (output / "metrics.json").read_text()
  shards = sorted(p for role in ("model", "baseline") for sub in EVAL_DIRS
                  for p in (output / role / sub).iterdir())
  redo = output / "model" / "eval_test" / "shard-00001-of-00002.jsonl"
  kept = {p: os.stat(p).st_mtime_ns for p in shards if p != redo}
  text = redo.read_text()
  redo.unlink()
  out = run_eval(workdir, output)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout == stdout
  assert (output / "metrics.json").read_text() == before
  assert redo.read_text() == text                      # sampled again, the same
  assert {p: os.stat(p).st_mtime_ns for p in kept} == kept  # the finished ones untouched

  out = run_eval(workdir, output, "--temperature=0.5")
  assert out.returncode == 2
  errors = [line for line in out.stderr.splitlines() if line.startswith("rest-jax eval:")]
  assert len(errors) == 1 and "holds samples of another evaluation" in errors[0], out.stderr
  assert "temperature" in errors[0] and "Traceback" not in out.stderr


def test_user_jsonl_task_from_gin_greedy_only(tmp_path, capsys):
  problems = tmp_path / "problems.jsonl"
  problems.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{i} + {i} = ?",
                                          "answer": str(2 * i)}) + "\n" for i in range(5)))
  output = tmp_path / "out"
  rc = cli.main(["eval", "--model=tiny", "--task=jsonl", f"--gin.jsonl_task.path='{problems}'",
                 "--gin.jsonl_task.num_test=3", "--greedy", "--max_new_tokens=8",
                 f"--output={output}"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err[-3000:]
  metrics = json.loads((output / "metrics.json").read_text())
  assert metrics["problems"] == 3 and metrics["settings"]["num_samples"] == 0
  assert set(metrics["model"]["metrics"]) == {"prompts", "samples_per_prompt", "greedy_pass@1",
                                              "greedy_pass@1_ci95"}
  rows = [json.loads(line) for p in sorted((output / "model" / "eval_test_greedy").iterdir())
          for line in p.read_text().splitlines()]
  assert len(rows) == 3 and {r["prompt_id"] for r in rows} < {f"q{i}" for i in range(5)}
  assert not (output / "model" / "eval_test").exists()
  recorded = json.loads((output / "model" / "eval.json").read_text())
  assert recorded["greedy"]["task"] == "jsonl" and recorded["greedy"]["problems"] == 3
  assert recorded["sampled"] is None
  assert "jsonl/test: 3 problems, a greedy completion each" in captured.out
  assert "greedy pass@1" in captured.out and "\npass@1" not in captured.out


@pytest.mark.parametrize("argv, message", [
    (["--model=tiny", "--task=no_such_task"], "unknown task 'no_such_task'; registered tasks: "),
    (["--model=/no/such/model"], "--model '/no/such/model': no such file or directory"),
    (["--model=tiny", "--baseline=/no/such/model"], "--baseline '/no/such/model': no such file"),
    (["--model=tiny", "--split=validation"], "task 'arithmetic' has no split 'validation'"),
    (["--model=tiny", "--num_samples=2", "-k", "4"],
     "-k 4 is larger than the 2 sampled completions per problem"),
    (["--model=tiny", "--greedy", "-k", "2"], "-k 2 is larger than the 0 sampled completions"),
    (["--model=tiny", "--task=jsonl"], "task 'jsonl': jsonl task: no problems file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
  assert cli.main(["eval", *argv]) == 2
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("rest-jax eval:")]
  assert len(lines) == 1 and lines[0].startswith(f"rest-jax eval: {message}"), err
  assert "Traceback" not in err and "In call to configurable" not in err


# --- the metrics behind the comparison ----------------------------------------------------


def test_per_prompt_metrics_average_to_summarize():
  rng = np.random.default_rng(0)
  per_prompt, greedy = {}, {}
  for i in range(40):
    answers = [str(x) for x in rng.integers(0, 3, 4)]
    per_prompt[f"p{i}"] = [{"reward": float(a == "0"), "extracted": a} for a in answers]
    greedy[f"p{i}"] = bool(rng.integers(0, 2))
  summary = evaluation.summarize(per_prompt, ks=(1, 2, 4), greedy=greedy)
  values = evaluation.per_prompt_metrics(per_prompt, ks=(1, 2, 4), greedy=greedy)
  assert set(values) == {"pass@1", "pass@2", "pass@4", "maj@2", "maj@4", "greedy_pass@1"}
  for name, v in values.items():
    assert len(v) == 40 and np.mean(v) == summary[name], name


def test_paired_bootstrap_resamples_prompts_once_for_both_models():
  rng = np.random.default_rng(1)
  difficulty = rng.uniform(0.0, 0.8, 100)        # prompts differ a lot, the models little
  a, b = difficulty + 0.05, difficulty
  assert evaluation.paired_bootstrap_ci(b, b) == (0.0, 0.0)
  lo, hi = evaluation.paired_bootstrap_ci(a, b)
  assert lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
  # Unpaired, the two intervals overlap: only pairing shows the difference.
  a_lo, a_hi = evaluation.bootstrap_ci(a)
  b_lo, b_hi = evaluation.bootstrap_ci(b)
  assert a_lo < b_hi
  d = evaluation.paired_differences({"pass@1": list(a), "maj@2": [0.0] * 100},
                                    {"pass@1": list(b)})
  assert set(d) == {"pass@1"} and d["pass@1"]["excludes_zero"]
  assert d["pass@1"]["difference"] == pytest.approx(0.05)
  with pytest.raises(ValueError):
    evaluation.paired_bootstrap_ci([1.0, 0.0], [1.0])
