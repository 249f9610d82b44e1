"""`rest-jax verify --input F.jsonl [--task T] [--output F]`: one JSON verdict line per input line.

Every line gets a verdict; a malformed one gets `error` and the reason. The exit status is 0
when every line could be checked and 2 when any got `error` (their count on stderr), so a
pipeline notices. Gin flags configure the task of `--task` as in a run.
"""

from __future__ import annotations

import io
import json
import os
import sys

from rest_jax.commands import gin_flags
from rest_jax.commands.errors import CommandError

_EXPECTED = ('expected one JSON object per line with a string "completion" and one of "answer", '
             '"tests" or "prompt_id"')


def add_arguments(parser):
  gin_flags.add_flags(parser)
  parser.add_argument("--input", required=True, help="JSONL: completion plus answer, tests, "
                      "or the prompt_id of a problem of --task")
  parser.add_argument("--task", help="registered task whose problems prompt_id refers to")
  parser.add_argument("--workers", type=int, default=None, help="verifier processes "
                      "(default: one per core)")
  parser.add_argument("--math_timeout_s", type=float, default=3.0)
  parser.add_argument("--output", default="-",
                      help="file for the verdict lines (default -: standard output)")


def _task_lookup(name: str):
  """prompt_id -> {"answer"} or {"tests"[, "prompt"]} of the task `name` (gin-configured)."""
  from rest_jax.loop import generate
  from rest_jax.tasks import get_task, task_names
  if name not in task_names():
    raise CommandError(f"--task {name}: unknown task; registered tasks: {task_names()}")
  try:
    task = get_task(name)
    by_id = {p.id: p for split in task.splits for p in task.problems(split)}
  except ValueError as e:  # a misconfigured task, or its data malformed (TaskDataError)
    raise CommandError(f"--task {name}: {e}") from e

  def lookup(prompt_id):
    if prompt_id not in by_id:
      raise KeyError(f"task {name!r} has no problem {prompt_id!r}")
    item = generate.verifier_item(by_id[prompt_id], "")
    item.pop("completion")
    return item
  return lookup


def main(args) -> int:
  from rest_jax import verifiers
  if gin_flags.gin_flags_given(args):
    if not args.task:
      raise CommandError("gin flags configure the task of --task, and no --task was given")
    gin_flags.configure_gin(args)
  from rest_jax.runtime import storage
  input_path = args.input
  if storage.is_remote(input_path):   # the verifiers read a local file
    try:
      input_path = storage.local_copy(input_path)
    except FileNotFoundError:
      input_path = ""
  if not os.path.isfile(input_path):
    raise CommandError(f"--input {args.input}: no such file; {_EXPECTED}")
  lookup = _task_lookup(args.task) if args.task else None
  # A bucket gets the whole output as one object at the end.
  remote_out = args.output != "-" and storage.is_remote(args.output)
  if args.output == "-":
    out = sys.stdout
  elif remote_out:
    out = io.StringIO()
  else:
    out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
  try:
    summary = verifiers.run_verify(input_path, out, task_lookup=lookup,
                                   workers=args.workers, math_timeout_s=args.math_timeout_s)
    if remote_out:
      storage.write_text(args.output, out.getvalue())
  finally:
    if out is not sys.stdout:
      out.close()
  print(json.dumps(summary), file=sys.stderr)
  if summary["error"]:
    print(f"rest-jax verify: {summary['error']} of {summary['items']} lines of {args.input} are "
          f"malformed (verdict 'error', each with its reason); {_EXPECTED}", file=sys.stderr)
    return 2
  return 0
