"""`rest-jax tasks`: registered tasks with split sizes; `rest-jax tasks show NAME`: prompts.

Gin flags configure the tasks as in a run (`--gin_file=my_run.gin`,
`--gin.jsonl_task.path="'my.jsonl'"`), so a user previews their own problems before a run.
"""

from __future__ import annotations

import sys

from rest_jax.commands import gin_flags


def add_arguments(parser):
  gin_flags.add_flags(parser)
  parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
  parser.add_argument("name", nargs="?", help="task name (for show)")
  parser.add_argument("-n", type=int, default=3, help="how many prompts to show")
  parser.add_argument("--split", default="train", choices=["train", "test"])


def main(args) -> int:
  if args.action == "show" and not args.name:
    print("rest-jax tasks show: name a task (see `rest-jax tasks`)", file=sys.stderr)
    return 2
  if args.n < 0:
    print(f"rest-jax tasks: -n must be >= 0, got {args.n}", file=sys.stderr)
    return 2
  if gin_flags.gin_flags_given(args):  # else skip importing every configurable: `tasks` stays quick
    gin_flags.configure_gin(args)
  from rest_jax.tasks import TaskDataError
  from rest_jax.tasks import cli as tasks_cli
  try:
    if args.action == "show":
      return tasks_cli.show_task_main(args.name, n=args.n, split=args.split)
    return tasks_cli.list_tasks_main()
  except TaskDataError as e:
    first = next(line for line in str(e).splitlines() if line.strip())
    print(f"rest-jax tasks: {first}", file=sys.stderr)
    return 2
