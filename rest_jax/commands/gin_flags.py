"""t5x-style gin flags: `--gin_file` (repeatable), `--gin.NAME=VALUE`, `--gin_search_path`.

Commands call `configure_gin` (the only gin parsing); everything else receives its settings
through gin bindings.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
from typing import Sequence

import gin
from etils import epath


def find_configs_dir() -> str:
  """The shipped `configs/` (models/*.gin, runs/*.gin).

  An installed wheel (`pip install .`) holds them as package data, `rest_jax/configs`
  (setup.py maps the top-level `configs/` there); a checkout or an editable install reads the
  top-level `configs/` beside the package.
  """
  package = str(importlib.resources.files("rest_jax"))
  installed = os.path.join(package, "configs")
  if os.path.isdir(installed):
    return installed
  return os.path.join(os.path.dirname(package), "configs")


CONFIGS_DIR = find_configs_dir()


class GinError(Exception):
  """A gin file or binding that cannot be parsed or bound; the message names where."""


def add_flags(parser: argparse.ArgumentParser):
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable; searched in --gin_search_path)")
  parser.add_argument("--gin_search_path", action="append", default=[],
                      help="directory searched for gin files and their includes")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding NAME=VALUE (same as --gin.NAME=VALUE)")


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` / `--gin.NAME VALUE` from the other arguments."""
  rest, bindings = [], []
  it = iter(range(len(argv)))
  for i in it:
    arg = argv[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise GinError(f"{arg} needs a value: --gin.NAME=VALUE")
        body = f"{body}={argv[i + 1]}"
        next(it)
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return rest, bindings


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()):
  """Parses files then bindings; raises GinError with gin's message (file and line)."""
  gin.clear_config()
  for path in [*search_paths, CONFIGS_DIR, os.getcwd()]:
    gin.add_config_file_search_path(path)
  files = []
  for f in gin_files:
    if not os.path.exists(f):
      found = [os.path.join(p, f) for p in [*search_paths, CONFIGS_DIR]
               if os.path.exists(os.path.join(p, f))]
      if not found:
        raise GinError(f"gin file {f!r} not found (searched ., {', '.join([*search_paths, CONFIGS_DIR])})")
      f = found[0]
    files.append(f)
  # gin logs an ERROR for every search path an include is not in before the one it is in.
  quiet = _DropMessages("Path not found")
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except Exception as e:  # gin raises several types; all carry the location in the message.
    raise GinError(f"{type(e).__name__}: {e}") from e
  finally:
    logging.getLogger().removeFilter(quiet)


class _DropMessages(logging.Filter):

  def __init__(self, prefix: str):
    super().__init__()
    self.prefix = prefix

  def filter(self, record) -> bool:
    return not str(record.msg).startswith(self.prefix)


def write_config(workdir, name: str = "config.gin", text: str | None = None) -> epath.Path:
  """Writes the resolved config atomically to WORKDIR/name."""
  from rest_jax.runtime import storage
  path = epath.Path(workdir) / name
  storage.write_text(path, gin.config_str() if text is None else text)
  return path


def import_configurables() -> None:
  """Modules that define gin configurables must be imported before parsing."""
  import rest_jax.training.improve  # noqa: F401
  import rest_jax.loop.rest_em  # noqa: F401
  import rest_jax.runtime.mesh  # noqa: F401
  import rest_jax.loop.rest  # noqa: F401
  import rest_jax.rewards.training  # noqa: F401
  import rest_jax.loop.run  # noqa: F401
  import rest_jax.sampling.sampler  # noqa: F401
  import rest_jax.tasks  # noqa: F401
  import rest_jax.training.step  # noqa: F401


def configure_gin(args) -> None:
  """Parses `--gin_file`/`--gin.X=V`/`--gin_bindings` of a command that called add_flags."""
  import_configurables()
  parse(args.gin_file, [*args.gin_bindings, *args.gin_dot_bindings], args.gin_search_path)


def gin_flags_given(args) -> bool:
  """Whether a command that called add_flags got any `--gin_file`/`--gin.X=V`/`--gin_bindings`."""
  return bool(args.gin_file or args.gin_bindings or args.gin_dot_bindings)
