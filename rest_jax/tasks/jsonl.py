"""The user's own problems, from JSONL files.

One problem per line, math (checked by the math verifier)::

  {"id": "p1", "prompt": "What is 2 + 3?", "answer": "5"}

or code (checked by the code verifier against tests in one of its two formats)::

  {"id": "c1", "prompt": "def add(a, b):\\n", "tests": {"test": "def check(f): ...",
                                                       "entry_point": "add"}}
  {"id": "c2", "prompt": "Read two ints, print their sum.",
   "tests": {"inputs": ["1 2\\n"], "outputs": ["3\\n"]}}

Optional per line: "solution" (a human solution, for the SFT baseline); any other key is
kept in the problem's meta. A numeric id or answer is turned into a string. All lines of
a task must be of one kind. Every malformed line is reported with its line number and what
was expected; nothing is dropped silently (blank lines carry no problem and are skipped).

Splits: either from files (`train_path`, `test_path`) or from one file (`path`) split by a
seeded hash (`test_fraction` or `num_test`), see `base.hash_split`.
"""

from __future__ import annotations

from typing import Any

import gin
from etils import epath

from rest_jax.tasks import jsonl_parse
from rest_jax.tasks import base
from rest_jax.tasks.prompts import Exemplar, PromptFormat, TaskPromptDefaults

MATH_INSTRUCTION = ("Solve the problem step by step. Put the final answer in \\boxed{}.")
CODE_INSTRUCTION = ("Solve the programming problem in Python. Reply with the complete program "
                    "in a ```python code block.")
_USER_PREFIX = "user JSONL: "
_KNOWN = ("id", "prompt", "answer", "tests", "solution")


def _check_tests(tests: Any) -> str | None:
  if not isinstance(tests, dict):
    return f"'tests' must be an object, got {type(tests).__name__}"
  if "test" in tests or "entry_point" in tests:
    if not (isinstance(tests.get("test"), str) and isinstance(tests.get("entry_point"), str)):
      return ("'tests' in HumanEval format needs string 'test' and 'entry_point', got keys "
              f"{sorted(tests)}")
    return None
  if "inputs" in tests or "outputs" in tests:
    ins, outs = tests.get("inputs"), tests.get("outputs")
    if not (isinstance(ins, list) and isinstance(outs, list) and
            all(isinstance(x, str) for x in ins + outs)):
      return "'tests' in stdin/stdout format needs 'inputs' and 'outputs' as lists of strings"
    if len(ins) != len(outs) or not ins:
      return (f"'tests' needs as many 'outputs' as 'inputs' (at least one), got {len(ins)} "
              f"inputs and {len(outs)} outputs")
    return None
  return ("'tests' must be {\"test\": ..., \"entry_point\": ...} or "
          f"{{\"inputs\": [...], \"outputs\": [...]}}, got keys {sorted(tests)}")


def _parse_line(obj: Any) -> tuple[str | None, dict | None]:
  """(error, fields) for one parsed line; fields has id, question, reference, kind, ..."""
  if not isinstance(obj, dict):
    return f"expected a JSON object, got {type(obj).__name__}", None
  pid = obj.get("id")
  if isinstance(pid, bool) or not isinstance(pid, (str, int)) or pid == "":
    return f"expected a non-empty string 'id', got {pid!r}", None
  prompt = obj.get("prompt")
  if not isinstance(prompt, str) or not prompt.strip():
    return f"expected a non-empty string 'prompt', got {prompt!r}", None
  has_answer, has_tests = "answer" in obj, "tests" in obj
  if has_answer == has_tests:
    return ("expected exactly one of 'answer' (math) or 'tests' (code), got "
            f"{'both' if has_answer else 'neither'}"), None
  if has_answer:
    ans = obj["answer"]
    if isinstance(ans, bool) or not isinstance(ans, (str, int, float)) or str(ans).strip() == "":
      return f"expected 'answer' to be a non-empty string or a number, got {ans!r}", None
    kind, reference = base.MATH_VERIFIER, str(ans).strip()
  else:
    problem = _check_tests(obj["tests"])
    if problem:
      return problem, None
    kind, reference = base.CODE_VERIFIER, obj["tests"]
  solution = obj.get("solution")
  if solution is not None and not isinstance(solution, str):
    return f"expected 'solution' to be a string, got {type(solution).__name__}", None
  meta = {k: v for k, v in obj.items() if k not in _KNOWN}
  if kind == base.CODE_VERIFIER and "entry_point" in reference:
    meta["code_prompt"] = prompt  # HumanEval style: the program is prompt + completion
  return None, {"id": str(pid), "question": prompt, "reference": reference, "kind": kind,
                "solution": solution, "meta": meta}


def read_problems(path) -> tuple[str, list[base.RawProblem]]:
  """Reads and checks a problems file; returns (verifier name, problems).

  Raises `base.TaskDataError` listing every malformed line as ``path:line: what``.
  """
  path = epath.Path(path)
  if not path.exists():
    raise base.TaskDataError(f"{path}: no such problems file")
  errors, rows = [], []
  first_kind = None  # (kind, line) of the first good line
  seen: dict[str, int] = {}
  hint = '; expected one object per line like {"id": ..., "prompt": ..., "answer": ...}'
  with path.open("r") as f:
    for lineno, obj in jsonl_parse.json_objects(f, str(path), errors, hint):
      problem, fields = _parse_line(obj)
      if problem:
        errors.append(f"{path}:{lineno}: {problem}")
        continue
      if first_kind is None:
        first_kind = (fields["kind"], lineno)
      elif fields["kind"] != first_kind[0]:
        errors.append(f"{path}:{lineno}: a {fields['kind']} problem, but line {first_kind[1]} is a "
                      f"{first_kind[0]} problem; one task holds one kind")
        continue
      if fields["id"] in seen:
        errors.append(f"{path}:{lineno}: duplicate id {fields['id']!r} (first on line "
                      f"{seen[fields['id']]})")
        continue
      seen[fields["id"]] = lineno
      rows.append(base.RawProblem(
          id=fields["id"], question=fields["question"], reference=fields["reference"],
          solution=fields["solution"],
          meta={**fields["meta"], "source": f"{path}:{lineno}"}))
  jsonl_parse.raise_if_errors(errors, base.TaskDataError, f"line(s) in {path}")
  if not rows:
    raise base.TaskDataError(f"{path}: no problems (the file is empty)")
  return first_kind[0], rows


def _read_fewshot(path) -> tuple[Exemplar, ...]:
  kind, rows = read_problems(path)
  del kind
  missing = [r.id for r in rows if r.solution is None]
  if missing:
    raise base.TaskDataError(f"{path}: few-shot exemplars need a 'solution'; missing for ids "
                             f"{missing[:10]}")
  return tuple(Exemplar(r.question, r.solution) for r in rows)


@gin.configurable(module="rest_jax.tasks")
def jsonl_task(*,
               task_name: str = "jsonl",
               path: str | None = None,
               train_path: str | None = None,
               test_path: str | None = None,
               test_fraction: float | None = None,
               num_test: int | None = None,
               seed: int = 0,
               fewshot_path: str | None = None,
               prompt_format: PromptFormat | None = None,
               tokenizer=None) -> base.RestTask:
  """A task over the user's JSONL problems.

  Args:
    task_name: the task's name (in ids of outputs and in the seqio registry).
    path: one file holding all problems, split by `test_fraction` or `num_test`.
    train_path, test_path: the splits as separate files (instead of `path`); either may be
      omitted, giving an empty split.
    test_fraction, num_test: the held-out share or count when splitting `path`.
    seed: salt of the hash split (another seed, another split).
    fewshot_path: a JSONL file of exemplars (same format, with "solution"), for num_shots > 0.
  """
  if path is not None and (train_path is not None or test_path is not None):
    raise base.TaskDataError("jsonl task: give either path= (split by fraction) or train_path=/test_path="
                     " (split by files), not both")
  if path is None and train_path is None and test_path is None:
    raise base.TaskDataError("jsonl task: no problems file; set jsonl_task.path (or train_path/test_path)")
  if path is not None:
    if (test_fraction is None) == (num_test is None):
      raise base.TaskDataError("jsonl task with one file: set exactly one of test_fraction or num_test")
    if test_fraction is not None and not 0.0 <= test_fraction <= 1.0:
      raise base.TaskDataError(f"jsonl task: test_fraction must be in [0, 1], got {test_fraction}")
    kind, all_rows = read_problems(path)
    n_test = num_test if num_test is not None else round(test_fraction * len(all_rows))
    idx = base.hash_split([r.id for r in all_rows], n_test, salt=f"jsonl:{seed}")
    split_rows = {s: [all_rows[i] for i in idx[s]] for s in base.SPLITS}
    source = f"{path} (split by hash, seed {seed})"
  else:
    if test_fraction is not None or num_test is not None:
      raise base.TaskDataError("jsonl task: test_fraction/num_test split one file (path=); with "
                       "train_path/test_path the files are the splits")
    split_rows, kinds = {}, {}
    for split, p in ((base.TRAIN, train_path), (base.TEST, test_path)):
      if p is None:
        split_rows[split] = []
      else:
        kinds[split], split_rows[split] = read_problems(p)
    if len(set(kinds.values())) > 1:
      raise base.TaskDataError(f"jsonl task: {train_path} holds {kinds[base.TRAIN]} problems but "
                               f"{test_path} holds {kinds[base.TEST]} problems")
    kind = next(iter(kinds.values()))
    overlap = {r.id for r in split_rows[base.TRAIN]} & {r.id for r in split_rows[base.TEST]}
    if overlap:
      raise base.TaskDataError(f"jsonl task: ids in both {train_path} and {test_path}: "
                               f"{sorted(overlap)[:10]}")
    source = f"train: {train_path}, test: {test_path}"

  instruction = MATH_INSTRUCTION if kind == base.MATH_VERIFIER else CODE_INSTRUCTION
  return base.RestTask(
      task_name, verifier=kind, load_split=lambda split: split_rows[split],
      prompt_defaults=TaskPromptDefaults(style="plain" if kind == base.MATH_VERIFIER else "raw",
                                         num_shots=0, instruction=instruction),
      prompt_format=prompt_format,
      exemplars=_read_fewshot(fewshot_path) if fewshot_path else (),
      tokenizer=tokenizer, description=f"user {kind} problems from JSONL", source=source)


base.register_task("jsonl", jsonl_task, "your own problems from a JSONL file")


def register_jsonl_task(task_name: str, **kwargs) -> None:
  """Registers a JSONL task under its own name: `get_task(task_name)` then builds it.

  `kwargs` are `jsonl_task`'s (path=, test_fraction=, ...).
  """
  taken = base.task_description(task_name)
  if task_name in base.task_names() and not taken.startswith(_USER_PREFIX):
    raise base.TaskDataError(f"task name {task_name!r} is taken by a built-in task ({taken})")

  def factory(**overrides):
    return jsonl_task(**{"task_name": task_name, **kwargs, **overrides})

  base.register_task(task_name, factory, f"{_USER_PREFIX}{kwargs.get('path') or kwargs}")
