"""`rest-jax run --gin_file=F [--gin.X=V ...]`: the configured job."""

from __future__ import annotations

import json

from rest_jax import gin_flags


def add_arguments(parser):
  gin_flags.add_flags(parser)


def main(args) -> int:
  from rest_jax import cli
  cli.configure_gin(args)
  from rest_jax import run as run_lib
  result = run_lib.run()
  print(json.dumps(result, indent=1, default=str))
  return 0
