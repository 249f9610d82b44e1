"""`rest-jax verify`: one verdict line per input line of a JSONL file.

Input line: {"id"?, "completion": str} plus one of
  "answer": str                                   a math reference,
  "tests": {"inputs", "outputs"[, "fn_name"]} or {"test", "entry_point"}[, "prompt": str],
  "prompt_id": ...                                a prompt of the task given to the command
                                                  (resolved by `task_lookup`).
Output line: {"id", "verdict": pass|fail|timeout|error, "extracted", "reason"}; "id" is the
input's, or its 1-based line number. A malformed line gets an 'error' line saying why.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Callable, Iterator, TextIO

from rest_jax.verifiers.math_answers import ALL_FORMATS
from rest_jax.verifiers.pool import VerifierPool
from rest_jax.verifiers.sandbox import SandboxConfig
from rest_jax.verifiers.verdict import VERDICTS, Verdict

TaskLookup = Callable[[object], dict]


def _entries(input_path: str, task_lookup: TaskLookup | None) -> Iterator[tuple]:
  """(id, item, None) for each verifiable line, (id, None, error Verdict) for the others."""
  with open(input_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{input_path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        yield lineno, None, Verdict("error", None, f"{where}: not JSON ({e.msg})")
        continue
      if not isinstance(record, dict):
        yield lineno, None, Verdict("error", None, f"{where}: expected a JSON object")
        continue
      ident = record.get("id", lineno)
      item, problem = _item(record, task_lookup)
      if problem:
        yield ident, None, Verdict("error", None, f"{where}: {problem}")
      else:
        yield ident, item, None


def _item(record: dict, task_lookup: TaskLookup | None) -> tuple[dict | None, str | None]:
  if not isinstance(record.get("completion"), str):
    return None, 'expected a string "completion"'
  item = {"completion": record["completion"]}
  if "answer" in record:
    return {**item, "answer": str(record["answer"])}, None
  if "tests" in record:
    return {**item, "tests": record["tests"], "prompt": record.get("prompt")}, None
  if "prompt_id" in record:
    if task_lookup is None:
      return None, 'has "prompt_id" but no task was given (--task)'
    try:
      reference = task_lookup(record["prompt_id"])
    except LookupError:
      return None, f"prompt_id {record['prompt_id']!r} is not in the task"
    if not isinstance(reference, dict):
      return None, f"the task gave {type(reference).__name__} for prompt_id, expected a dict"
    if "answer" not in reference and "tests" not in reference:
      return None, f"the task gave no answer or tests for prompt_id {record['prompt_id']!r}"
    wanted = ("answer", "tests", "prompt")
    return {**item, **{k: reference[k] for k in wanted if k in reference}}, None
  return None, 'expected "answer", "tests" or "prompt_id" beside "completion"'


def run_verify(input_path: str, output_stream: TextIO, *, task_lookup: TaskLookup | None = None,
               pool: VerifierPool | None = None, workers: int | None = None,
               math_timeout_s: float = 3.0, sandbox: SandboxConfig | None = None,
               formats: tuple[str, ...] = ALL_FORMATS) -> dict:
  """Verifies every line of `input_path`, writing one JSON verdict line per input line.

  task_lookup(prompt_id) returns {"answer": ...} or {"tests": ..., "prompt"?: ...}.
  Returns a summary: counts per verdict, items, seconds, items_per_s.
  """
  own_pool = pool is None
  pool = pool or VerifierPool(workers, math_timeout_s=math_timeout_s, sandbox=sandbox,
                              formats=formats)
  counts = dict.fromkeys(VERDICTS, 0)
  start = time.monotonic()
  for_pool, for_output = itertools.tee(_entries(input_path, task_lookup))
  verdicts = pool.map(item for _, item, error in for_pool if error is None)
  try:
    for ident, _, error in for_output:
      verdict = error or next(verdicts)
      counts[verdict.verdict] += 1
      output_stream.write(json.dumps({"id": ident, "verdict": verdict.verdict,
                                      "extracted": verdict.extracted,
                                      "reason": verdict.reason}) + "\n")
  finally:
    verdicts.close()  # settles the pool's statistics now rather than at garbage collection
    if own_pool:
      pool.close()
  seconds = time.monotonic() - start
  items = sum(counts.values())
  return {"items": items, **counts, "seconds": round(seconds, 3),
          "items_per_s": round(items / seconds, 1) if seconds else 0.0}
