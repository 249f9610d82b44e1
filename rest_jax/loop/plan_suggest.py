"""What `rest-jax plan` suggests when a run does not fit: a change found by compiling
alternatives (micro-batches, the largest sampler slot count or prompt rows that fits,
bfloat16 parameters, larger slices of the same generation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax.numpy as jnp

from rest_jax.loop import plan as plan_lib
from rest_jax.loop.config import LoopConfig
from rest_jax.runtime import tpu_slices
from rest_jax.sampling.sampler import Sampler
from rest_jax.training import improve


def _family_of(name: str) -> str:
  return {"train_step": "train_step"}.get(name, "sampler")


def _state_bytes_per_chip(plan_params: int, param_dtype: str, chips: int) -> float:
  """Parameters and AdamW's two moments, evenly sharded (the floor of the train step)."""
  return 3 * plan_params * jnp.dtype(param_dtype).itemsize / chips


def _fits_elsewhere(topology: str, num_slices: int, only: set) -> bool:
  """Whether the failing programs fit on another slice. libtpu compiles for one topology per
  process (a second one aborts it), so this runs `rest-jax plan` in a child process on the
  config in force."""
  import gin
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "config.gin")
    with open(path, "w", encoding="utf-8") as f:
      f.write(gin.config_str())
    r = subprocess.run([sys.executable, "-m", "rest_jax.cli", "plan", f"--gin_file={path}",
                        f"--topology={topology}", f"--num_slices={num_slices}", "--json",
                        "--no_suggest", f"--only={','.join(sorted(only))}"],
                       capture_output=True, text=True,
                       env={**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  try:
    return bool(json.loads(r.stdout)["fits"])
  except (json.JSONDecodeError, KeyError):
    return False


def _with_bindings(bindings: dict, fn):
  """`fn()` with gin `bindings` in force, the previous values put back after."""
  import gin
  before = {}
  for k in bindings:
    try:
      before[k] = gin.query_parameter(k)
    except ValueError:
      before[k] = None
  with gin.unlock_config():
    for k, v in bindings.items():
      gin.bind_parameter(k, v)
  try:
    return fn()
  finally:
    with gin.unlock_config():
      for k, v in before.items():
        gin.bind_parameter(k, v)


def largest_sampler_setting(topology: str, num_slices: int, plan: plan_lib.Plan) -> str | None:
  """The largest `LoopConfig.sampler_slots` (Generate does not fit) or `Sampler.prompt_rows`
  (only the greedy evaluation's layout does not fit) that fits, or None. Memory grows
  linearly in either, so two compiled sizes give the line; the value it points to is then
  compiled to confirm (stepping down while it does not fit)."""
  sampler_failing = [p for p in plan.failing if _family_of(p.name) == "sampler"]
  if not sampler_failing or len(sampler_failing) != len(plan.failing):
    return None
  loop = LoopConfig(workdir="plan")
  greedy_only = all(p.name.endswith("_greedy") for p in sampler_failing)
  group = gin_group_size()
  if greedy_only:
    key, unit, start = "Sampler.prompt_rows", 1, _bound_prompt_rows() or loop.sampler_slots
  else:
    key, unit = "LoopConfig.sampler_slots", min(group, loop.num_samples)
    start = loop.sampler_slots
  usable = plan.slice.chip.usable_hbm

  def need(value):
    alt = _with_bindings({key: value}, lambda: plan_lib.plan_run(topology, num_slices, only={"sampler"}))
    sized = [p.per_chip_bytes for p in alt.programs if p.per_chip_bytes == p.per_chip_bytes]
    return alt.fits, max(sized) if sized else float("nan")

  hi, need_hi = start, max(p.per_chip_bytes for p in sampler_failing)   # NaN when unsized
  lo = (start // 2) // unit * unit
  while True:
    if lo < unit:
      return None
    fits_lo, need_lo = need(lo)
    if fits_lo:
      break
    hi, need_hi, lo = lo, need_lo, (lo // 2) // unit * unit
  # `lo` fits and `hi` does not: follow the line between them, then confirm.
  best = lo
  if need_hi == need_hi and need_hi > need_lo:
    slope = (need_hi - need_lo) / (hi - lo)
    best = max(lo, min(hi - unit, lo + int((0.98 * usable - need_lo) / slope) // unit * unit))
  while best > lo and not need(best)[0]:
    best = max(lo, best - unit * max(1, (best - lo) // (4 * unit)))
  return f"{key}={best}"


def gin_group_size() -> int:
  import inspect
  import gin
  try:
    return int(gin.query_parameter("Sampler.group_size"))
  except ValueError:
    return inspect.signature(Sampler.__init__).parameters["group_size"].default


def _bound_prompt_rows() -> int | None:
  import gin
  try:
    return gin.query_parameter("Sampler.prompt_rows")
  except ValueError:
    return None


def suggest(topology: str, num_slices: int, plan: plan_lib.Plan) -> str | None:
  """A change that makes every failing program fit, found by compiling alternatives (the
  cheapest first): micro-batches, fewer sampler slots, bfloat16 parameters, then larger
  slices of the same generation. Its description, or None."""
  import gin
  failing = {_family_of(p.name) for p in plan.failing}
  if failing == {"sampler"}:
    found = largest_sampler_setting(topology, num_slices, plan)
    if found:
      return found
  loop = LoopConfig(workdir="plan")
  icfg = improve.ImproveConfig()
  chips = plan.slice.chips * plan.slice.num_slices
  usable = plan.slice.chip.usable_hbm
  state_fits = _state_bytes_per_chip(plan.params, loop.param_dtype, chips) < 0.9 * usable
  # (description, gin bindings, topology, the programs it can help); only candidates that can
  # help every failing program are tried.
  cands: list[tuple[str, dict, str, set]] = []
  if state_fits:
    cands += [(f"ImproveConfig.accum_steps={a}", {"ImproveConfig.accum_steps": a}, topology,
               {"train_step"}) for a in (2 * icfg.accum_steps, 4 * icfg.accum_steps)
              if icfg.batch_size % a == 0]
  cands += [(f"LoopConfig.sampler_slots={n}", {"LoopConfig.sampler_slots": n}, topology,
             {"sampler"}) for n in (loop.sampler_slots // 2, loop.sampler_slots // 4) if n >= 8]
  if loop.param_dtype == "float32":
    cands.append(("LoopConfig.param_dtype='bfloat16'", {"LoopConfig.param_dtype": "bfloat16"},
                  topology, {"train_step"}))
  fam = plan.slice.chip.family
  bigger = [n for n in tpu_slices.valid_names() if n.startswith(fam + "-")
            and plan.slice.chips < tpu_slices.parse(n).chips <= 8 * plan.slice.chips]
  cands += [(f"--topology={n}", {}, n, {"train_step", "sampler"}) for n in bigger
            if _state_bytes_per_chip(plan.params, loop.param_dtype,
                                     tpu_slices.parse(n).chips * num_slices) < 0.9 * usable]
  cands = [c for c in cands if failing <= c[3]]
  # The values in force now, to put back after each alternative (gin cannot unbind one).
  current = {"ImproveConfig.accum_steps": icfg.accum_steps,
             "LoopConfig.sampler_slots": loop.sampler_slots,
             "LoopConfig.param_dtype": loop.param_dtype}
  for desc, bindings, topo, _ in cands:
    if topo != topology:
      if _fits_elsewhere(topo, num_slices, failing):
        return desc
      continue
    with gin.unlock_config():
      for k, v in bindings.items():
        gin.bind_parameter(k, v)
    try:
      alt = plan_lib.plan_run(topo, num_slices, only=failing)
    finally:
      with gin.unlock_config():
        for k in bindings:
          gin.bind_parameter(k, current[k])
    if alt.fits:
      return desc
  return None
