"""`rest-jax verify --input F.jsonl [--task T]`: one JSON verdict line per input line."""

from __future__ import annotations

import json
import sys


def add_arguments(parser):
  parser.add_argument("--input", required=True, help="JSONL: completion plus answer, tests, "
                      "or the prompt_id of a problem of --task")
  parser.add_argument("--task", help="registered task whose problems prompt_id refers to")
  parser.add_argument("--workers", type=int, default=None, help="verifier processes "
                      "(default: one per core)")
  parser.add_argument("--math_timeout_s", type=float, default=3.0)


def main(args) -> int:
  from rest_jax.loop import generate
  from rest_jax import verifiers
  lookup = None
  if args.task:
    from rest_jax.tasks import get_task
    task = get_task(args.task)
    by_id = {p.id: p for split in task.splits for p in task.problems(split)}

    def lookup(prompt_id):
      if prompt_id not in by_id:
        raise KeyError(f"task {args.task!r} has no problem {prompt_id!r}")
      item = generate.verifier_item(by_id[prompt_id], "")
      item.pop("completion")
      return item
  try:
    summary = verifiers.run_verify(args.input, sys.stdout, task_lookup=lookup,
                                   workers=args.workers, math_timeout_s=args.math_timeout_s)
  except verifiers.SandboxUnavailable as e:
    print(f"rest-jax verify: {e}", file=sys.stderr)
    return 2
  except FileNotFoundError as e:
    print(f"rest-jax verify: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary), file=sys.stderr)
  return 0
