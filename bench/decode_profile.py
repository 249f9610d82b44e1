"""Where a decode step's time goes: `python bench/decode_profile.py`.

Times decode-only dispatches of the sampler (`Sampler.time_decode`: every slot decoding at
one position, no prefill, no host work between dispatches) for each batch size and layer-scan
unroll factor, then profiles a few dispatches with `jax.profiler` and sums the XLA kernels'
durations per kind (numbered clones of a fusion are one kind), per decode step.

Kernels run on a thread pool, so a kernel's duration can include time it waited for a
thread: the breakdown shows proportions, and its sum can exceed the step time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOST_EVENTS = ("$", "Thunk", "Pjit", "Common", "Slinky", "ParseArguments")


def kernel_breakdown(trace_dir: str, steps: int) -> dict[str, float]:
  """Milliseconds per decode step by kernel kind, from a perfetto trace."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                           recursive=True))
  if not files:
    raise SystemExit(f"no perfetto trace under {trace_dir}")
  with gzip.open(files[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_HOST_EVENTS):
      total[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0)
  return {k: v / 1e3 / steps for k, v in total.most_common()}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="smollm2-135m")
  parser.add_argument("--batches", default="16")
  parser.add_argument("--unrolls", default="1,all", help="layer-scan unroll factors; all = every layer")
  parser.add_argument("--cache_len", type=int, default=256)
  parser.add_argument("--position", type=int, default=128)
  parser.add_argument("--steps_per_dispatch", type=int, default=8)
  parser.add_argument("--dispatches", type=int, default=6)
  parser.add_argument("--top", type=int, default=8, help="kernel kinds to print")
  args = parser.parse_args()

  sys.path.insert(0, REPO)
  import jax
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.loading import load_model
  from rest_jax.sampling.sampler import Sampler, SamplingParams

  print(json.dumps({"command": "python " + " ".join(sys.argv), "date": str(datetime.date.today()),
                    "device": jax.devices()[0].device_kind, "jax": jax.__version__}))
  mesh = mesh_lib.create_mesh((1, -1, 1))
  loaded = load_model(args.preset, mesh, dtype="float32")
  sampling = SamplingParams(temperature=0.7, top_k=40)
  for b in [int(x) for x in args.batches.split(",")]:
    for u in args.unrolls.split(","):
      unroll = True if u == "all" else int(u)
      sampler = Sampler(loaded.graphdef, loaded.config, loaded.tokenizer, mesh, num_slots=b,
                        steps_per_dispatch=args.steps_per_dispatch, layer_unroll=unroll)
      per_step, _ = sampler.time_decode(loaded.params, cache_len=args.cache_len,
                                        position=args.position, dispatches=args.dispatches,
                                        sampling=sampling)
      with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        sampler.time_decode(loaded.params, cache_len=args.cache_len, position=args.position,
                            dispatches=2, sampling=sampling)
        jax.profiler.stop_trace()
        # time_decode runs one untimed dispatch first, then `dispatches`.
        kinds = kernel_breakdown(trace_dir, 3 * args.steps_per_dispatch)
      top = {k: round(v, 1) for k, v in list(kinds.items())[:args.top]}
      print(json.dumps({"batch": b, "unroll": u, "ms_per_step": round(per_step * 1e3, 1),
                        "tokens_per_s": round(b / per_step, 1),
                        "kernel_ms_per_step": top}), flush=True)


if __name__ == "__main__":
  main()
