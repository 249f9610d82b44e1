"""`rest-jax plan --gin_file=F [--gin.X=V ...] --topology=v5p-128 [--num_slices=N] [--json]`.

Compiles, without running anything and without a TPU, the programs `rest-jax run` would run
for this config on that TPU slice (libtpu: `pip install '.[tpu]'`), and prints per-chip
memory against the chip's HBM, the collectives in each program and labelled estimates of step
time, MFU and decode tokens/s (loop/plan.py). Exits 2 when a program does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys

from rest_jax.commands import gin_flags


def add_arguments(parser):
  gin_flags.add_flags(parser)
  parser.add_argument("--topology", required=True,
                      help="a gcloud accelerator type: v4-32, v5e-16 (v5litepod-16), v5p-128, "
                           "v6e-64, ... or a topology such as v5e:4x4")
  parser.add_argument("--num_slices", type=int, default=1,
                      help="multi-slice: data parallelism across this many slices")
  parser.add_argument("--json", action="store_true", help="print the plan as JSON")
  # Used by the search for a change that fits (one topology per process).
  parser.add_argument("--no_suggest", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--only", default=None, help=argparse.SUPPRESS)


def main(args) -> int:
  from rest_jax.commands.errors import CommandError
  from rest_jax.runtime import tpu_slices
  try:
    tpu_slices.parse(args.topology, args.num_slices)   # before any gin or compilation work
  except tpu_slices.SliceError as e:
    raise CommandError(str(e)) from e
  gin_flags.configure_gin(args)
  from rest_jax.loop import plan as plan_lib
  from rest_jax.loop import plan_suggest
  try:
    plan = plan_lib.plan_run(args.topology, args.num_slices,
                             only=set(args.only.split(",")) if args.only else None)
  except tpu_slices.SliceError as e:
    raise CommandError(str(e)) from e
  if args.json:
    print(json.dumps(plan_lib.to_json(plan), indent=1, default=str))
  else:
    print(plan_lib.table(plan))
  if not plan.fits and args.no_suggest:
    return 2
  if not plan.fits:
    worst = plan.failing
    found = plan_suggest.suggest(args.topology, args.num_slices, plan)
    fix = (f"this fits: {found}" if found else
           "no alternative tried fits (micro-batches, fewer sampler slots, bfloat16 "
           "parameters, slices up to 8x larger)")
    print(f"rest-jax plan: does not fit on {args.topology}: " + "; ".join(
        f"{p.label}: {p.error}" if p.per_chip_bytes != p.per_chip_bytes else
        f"{p.label} needs {p.per_chip_bytes / 2**30:.2f}G per chip of "
        f"{p.usable_bytes / 2**30:.2f}G" for p in worst) + f"; {fix}", file=sys.stderr)
    return 2
  return 0
