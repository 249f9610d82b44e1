"""The "pod plans" table: `rest-jax plan` of the math template for a few presets on a few TPU
slices (compile only, no TPU), as BENCHMARKS.md rows.

  .venv/bin/python bench/pod_plans.py [--presets gemma3-1b,llama3-8b,qwen2.5-7b]
                                      [--topologies v4-32,v5e-64,v5p-64,v6e-16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def plan(preset: str, topology: str) -> dict:
  cmd = [os.path.join(os.path.dirname(sys.executable), "rest-jax"), "plan",
         "--gin_file=runs/rest_em_math.gin", f"--gin.BASE_MODEL='{preset}'",
         "--gin.MESH=(1, -1, 1)", "--gin.TASK='gsm8k'", f"--topology={topology}", "--json",
         "--no_suggest"]
  t0 = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True,
                     env={**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  seconds = time.perf_counter() - t0
  try:
    out = json.loads(r.stdout)
  except json.JSONDecodeError:
    return {"preset": preset, "topology": topology, "error": r.stderr.strip()[-300:],
            "seconds": seconds}
  out.update(preset=preset, seconds=seconds)
  return out


def row(p: dict) -> str:
  if "error" in p:
    return (f"| {p['preset']} | {p['topology']} | error: {p['error']} | | | | | "
            f"{p['seconds']:.0f} s |")
  label = lambda q: f"{q['name']}/{q['placement']}" if q.get("placement") else q["name"]
  # The sampler programs of the placement `auto` takes (or every one when none fits).
  chosen = p.get("sample_placement")
  chosen = "" if chosen == "global" and "" in p.get("placements", {}) else chosen
  progs = {label(q): q for q in p["programs"]
           if q["name"] == "train_step" or chosen is None or q.get("placement", "") == chosen}
  sized = [q for q in progs.values() if q["per_chip_bytes"] == q["per_chip_bytes"]]  # not NaN
  worst = max(sized, key=lambda q: q["per_chip_bytes"] / q["usable_bytes"])
  mem = (f"{worst['per_chip_bytes'] / 2**30:.1f} of {worst['usable_bytes'] / 2**30:.1f} GiB "
         f"({label(worst)})")
  train = progs.get("train_step", {})
  decode = next((q for q in progs.values() if q["name"] == "decode" and q["fits"]), {})
  mfu = f"{train['estimate']['mfu']:.0%}" if train.get("fits") and train.get("estimate") else "-"
  tps = (f"{decode['estimate']['tokens_per_s_per_chip']:,.0f}"
         if decode.get("fits") and decode.get("estimate") else "-")
  fits = "yes" if p["fits"] else "no: " + "; ".join(
      f"{label(q)}: {q['error'] or 'out of memory'}" for q in progs.values() if not q["fits"])
  places = p.get("placements", {})
  sampling = ("one host" if set(places) <= {""} else ", ".join(
      f"{k} {'fits' if v else 'no'}" for k, v in sorted(places.items())))
  return (f"| {p['preset']} | {p['topology']} | {fits} | {sampling} | {mem} | {mfu} | {tps} | "
          f"{p['seconds']:.0f} s |")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="gemma3-1b,llama3-8b,qwen2.5-7b")
  ap.add_argument("--topologies", default="v4-32,v5e-64,v5p-64,v6e-16")
  args = ap.parse_args()
  print("| preset | slice | fits | Generate placements | largest per-chip memory | est. train "
        "MFU | est. decode tok/s/chip | plan time |", flush=True)
  print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
  for preset in args.presets.split(","):
    for topology in args.topologies.split(","):
      print(row(plan(preset, topology)), flush=True)


if __name__ == "__main__":
  main()
