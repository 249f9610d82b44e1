"""The `rest-jax` command: one subcommand per job, t5x-style gin flags for configured jobs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from rest_jax import gin_flags

COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help_text: str):
  def register(fn):
    COMMANDS[name] = (help_text, fn)
    return fn
  return register


def import_configurables() -> None:
  """Modules that define gin configurables must be imported before parsing."""
  import rest_jax.mesh  # noqa: F401
  import rest_jax.models.config  # noqa: F401
  import rest_jax.run  # noqa: F401
  import rest_jax.training  # noqa: F401


def _configure_gin(args) -> None:
  import_configurables()
  gin_flags.parse(args.gin_file, [*args.gin_bindings, *args.gin_dot_bindings],
                  args.gin_search_path)


@command("run", "the whole ReST-EM loop from a gin config (resumes an existing WORKDIR)")
def _run(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
  gin_flags.add_flags(parser)
  args = parser.parse_args(argv)
  _configure_gin(args)
  from rest_jax import run as run_lib
  result = run_lib.run()
  print(json.dumps(result, indent=1, default=str))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rest-jax",
      description="ReST-EM and ReST: self-training of language models on verified samples.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (help_text, _) in COMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every save step at INFO through absl; keep the console for progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  parser = build_parser()
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    parser.print_help(sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
    if argv and argv[0] not in ("-h", "--help"):
      print(f"\nrest-jax: unknown command {argv[0]!r}", file=sys.stderr)
      return 2
    return 0
  name, rest = argv[0], argv[1:]
  sub = argparse.ArgumentParser(prog=f"rest-jax {name}", description=COMMANDS[name][0])
  try:
    rest, dot_bindings = gin_flags.split_gin_args(rest)
    sub.set_defaults(gin_dot_bindings=dot_bindings)
    return COMMANDS[name][1](sub, rest) or 0
  except gin_flags.GinError as e:
    print(f"rest-jax {name}: gin config error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"rest-jax {name}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
