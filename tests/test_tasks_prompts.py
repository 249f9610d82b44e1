"""Prompt formats render as configured (plain few-shot, chat, raw), through gin too; the CLI."""

import dataclasses
import io
import json
import pathlib
import subprocess
import sys

import gin
import pytest

from rest_jax.tasks import TEST, TRAIN, PromptFormat, get_task
from rest_jax.tasks import cli
from rest_jax.tasks import gsm8k as gsm8k_lib
from rest_jax.tokenizers import ByteTokenizer


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


@dataclasses.dataclass(frozen=True)
class ChatTokenizer(ByteTokenizer):
  """Byte tokenizer with a visible chat template, to see which messages a prompt holds."""

  def apply_chat_template(self, messages, add_generation_prompt=True):
    text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


def test_plain_few_shot_prompt_layout():
  task = get_task("gsm8k", prompt_format=PromptFormat(num_shots=2))
  p = task.problems(TRAIN)[0]
  shots = gsm8k_lib.FEWSHOT[:2]
  expected = "\n\n".join([f"Question: {s.question}\nAnswer: {s.solution}" for s in shots] +
                         [f"Question: {p.meta['question']}\nAnswer:"])
  assert p.prompt == expected
  assert p.prompt.count("Question: ") == 3


def test_zero_shot_plain_and_custom_labels():
  fmt = PromptFormat(num_shots=0, question_prefix="Problem:\n", answer_prefix="Solution:")
  p = get_task("arithmetic", prompt_format=fmt, num_train=3, num_test=1).problems(TRAIN)[0]
  assert p.prompt == f"Problem:\n{p.meta['question']}\nSolution:"
  assert p.solution.startswith(" ")


def test_chat_prompt_has_instruction_shots_and_generation_prompt():
  fmt = PromptFormat(style="chat", num_shots=1, system="Be brief.")
  task = get_task("gsm8k", prompt_format=fmt, tokenizer=ChatTokenizer())
  p = task.problems(TEST)[0]
  shot = gsm8k_lib.FEWSHOT[0]
  instr = gsm8k_lib.INSTRUCTION
  assert p.prompt == (
      "<system>Be brief.</system>"
      f"<user>{instr}\n\n{shot.question}</user><assistant>{shot.solution}</assistant>"
      f"<user>{instr}\n\n{p.meta['question']}</user><assistant>")
  assert not p.solution.startswith(" ")  # chat replies start right after the template


def test_chat_code_prompt_and_completion_are_fenced():
  task = get_task("humaneval", prompt_format=PromptFormat(style="chat"), tokenizer=ChatTokenizer())
  p = task.problems(TRAIN)[0]
  assert p.prompt.endswith(f"```python\n{p.meta['code_prompt']}```</user><assistant>")
  assert p.solution.startswith(f"```python\n{p.meta['code_prompt']}") and p.solution.endswith("```")
  assert p.meta["completion_mode"] == "fenced"


def test_invalid_formats_are_refused_with_reasons():
  with pytest.raises(ValueError, match="needs a tokenizer"):
    get_task("arithmetic", prompt_format=PromptFormat(style="chat"))
  with pytest.raises(ValueError, match="only 4 exemplars|has 4 exemplars"):
    get_task("math500", prompt_format=PromptFormat(num_shots=5))
  with pytest.raises(ValueError, match="'raw' prompt style"):
    get_task("gsm8k", prompt_format=PromptFormat(style="raw", num_shots=2))
  with pytest.raises(ValueError, match="unknown prompt style"):
    get_task("gsm8k", prompt_format=PromptFormat(style="fancy"))


def test_problem_records_are_json_and_keep_the_exact_prompt():
  p = get_task("humaneval").problems(TEST)[0]
  back = json.loads(json.dumps(p.to_json()))
  assert back["prompt"] == p.prompt and back["reference"] == p.reference
  assert back["verifier"] == "code"


def test_gin_selects_task_knobs_and_prompt_format():
  gin.clear_config()
  try:
    gin.parse_config("""
        get_task.name = "arithmetic"
        get_task.prompt_format = @PromptFormat()
        PromptFormat.style = "chat"
        PromptFormat.instruction = "Compute."
        arithmetic_task.digits = 3
        arithmetic_task.num_train = 5
        arithmetic_task.num_test = 2
    """)
    task = get_task(tokenizer=ChatTokenizer())
    assert task.name == "arithmetic" and task.prompt_format.style == "chat"
    assert task.num_problems(TRAIN) == 5
    p = task.problems(TRAIN)[0]
    assert p.prompt.startswith("<user>Compute.\n\n") and p.id.startswith("arith-d3s2-")
    start = int(p.meta["question"].split(" has ")[1].split()[0])
    assert 100 <= start <= 999
    # Explicit arguments win over gin bindings.
    assert get_task("arithmetic", digits=1, tokenizer=ChatTokenizer()).problems(TRAIN)[0].id \
        .startswith("arith-d1s2-")
  finally:
    gin.clear_config()


def test_cli_lists_tasks_with_split_sizes():
  out = io.StringIO()
  assert cli.list_tasks_main(out) == 0
  lines = {line.split()[0]: line for line in out.getvalue().splitlines()[1:]}
  assert "train=1000, test=319" in lines["gsm8k"]
  assert "train=211, test=100" in lines["math500"]
  assert "train=100, test=64" in lines["humaneval"]
  assert "train=2000, test=200" in lines["arithmetic"]
  assert "unavailable" in lines["jsonl"]  # needs a file: listed with the reason


def test_cli_shows_formatted_prompts():
  out = io.StringIO()
  assert cli.show_task_main("gsm8k", n=2, split=TEST, out=out) == 0
  text = out.getvalue()
  first, second = get_task("gsm8k").problems(TEST)[:2]
  assert f"=== {first.id} ===" in text and f"=== {second.id} ===" in text
  assert first.prompt in text and "reference (math)" in text
  assert text.count("=== gsm8k-") == 2
  out, err = io.StringIO(), io.StringIO()
  assert cli.show_task_main("nope", out=out, err=err) == 2 and out.getvalue() == ""
  assert err.getvalue().startswith("rest-jax tasks show: unknown task 'nope'")


def test_cli_names_a_task_setting_it_cannot_meet_in_one_line():
  # A task knob the generator cannot satisfy is the user's setting, not a bug: one line, exit 2.
  r = subprocess.run([str(pathlib.Path(sys.executable).parent / "rest-jax"), "tasks", "show", "programs", "-n", "1",
                      "--gin.programs_task.steps=1", "--gin.programs_task.num_train=300"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.startswith("rest-jax tasks show: programs: only "), r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
