"""`rest-jax run --gin_file=F [--gin.X=V ...]`: the whole loop; resumes an existing WORKDIR."""

from __future__ import annotations

import json
import sys

from rest_jax import gin_flags


def add_arguments(parser):
  gin_flags.add_flags(parser)


def main(args) -> int:
  from rest_jax import cli
  cli.configure_gin(args)
  from rest_jax import loop as loop_lib
  from rest_jax import run as run_lib
  from rest_jax.models.weights import WeightsError
  from rest_jax.tasks import TaskDataError
  try:
    result = run_lib.run()
  except (loop_lib.ConfigChangedError, WeightsError, TaskDataError) as e:
    print(f"rest-jax run: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1, default=str))
  return 0
