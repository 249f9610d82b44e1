"""`rest-jax tasks`: registered tasks with split sizes; `rest-jax tasks show NAME`: prompts."""

from __future__ import annotations


def add_arguments(parser):
  parser.add_argument("action", nargs="?", choices=["list", "show"], default="list")
  parser.add_argument("name", nargs="?", help="task name (for show)")
  parser.add_argument("-n", type=int, default=3, help="how many prompts to show")
  parser.add_argument("--split", default="train", choices=["train", "test"])


def main(args) -> int:
  from rest_jax.tasks import cli as tasks_cli
  if args.action == "show":
    if not args.name:
      print("rest-jax tasks show: name a task (see `rest-jax tasks`)")
      return 2
    return tasks_cli.show_task_main(args.name, n=args.n, split=args.split)
  return tasks_cli.list_tasks_main()
