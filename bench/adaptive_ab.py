"""A/B of the adaptive sampling budget against the paper's fixed K samples per prompt.

Runs one ReST-EM config twice, the same in everything but Generate's budget: arm A draws
`num_samples` per training prompt (`adaptive_rounds=0`); arm B spends the same number of
generated tokens in rounds, stopping prompts with `max_per_prompt` distinct verified samples
and giving the rest to prompts still unsolved (`adaptive_rounds=R`). The seed is the same, so
sample j of prompt p is the same completion in both arms until the arms' policies differ, and
every evaluation uses the same prompts and draws: test and validation pass@1 are compared per
prompt with paired bootstrap 95% intervals (B minus A).

  .venv/bin/python bench/adaptive_ab.py --gin_file=runs/demo.gin --rounds 4 --out /tmp/ab_demo \
      [--gin.X=V ...]   (flags for both arms)

Prints a Markdown table per iteration (generated tokens, prompts solved, kept samples, val
and test pass@1) and the paired differences of the best iteration by validation; writes the
same as JSON to OUT/ab.json. A finished arm is not rerun (its workdir resumes as done).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from rest_jax.loop import evaluation
from rest_jax.runtime import workdir as workdir_lib


def run_arm(out: pathlib.Path, name: str, gin_file: str, flags: list[str], rounds: int) -> float:
  """Runs (or resumes) one arm's `rest-jax run`; returns its wall time in seconds."""
  wd = out / name
  cmd = [sys.executable, "-m", "rest_jax.cli", "run", f"--gin_file={gin_file}",
         f"--gin.WORKDIR='{wd}'", f"--gin.LoopConfig.adaptive_rounds={rounds}", *flags]
  print("$", " ".join(cmd), flush=True)
  t0 = time.time()
  with open(out / f"{name}.log", "w") as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
  return time.time() - t0


def per_prompt_pass1(stage_dir: pathlib.Path, split: str) -> dict[str, float]:
  """prompt id -> mean reward of its sampled evaluation completions on `split`."""
  rows: dict[str, list[float]] = {}
  for path in sorted((stage_dir / f"eval_{split}").glob("shard-*.jsonl")):
    for r in workdir_lib.read_jsonl(path):
      rows.setdefault(r["prompt_id"], []).append(float(r["reward"] >= 1.0))
  return {pid: float(np.mean(v)) for pid, v in rows.items()}


def arm_summary(wd: pathlib.Path) -> dict:
  summary = workdir_lib.read_json(wd / "metrics.json")
  iters = {}
  for stage in sorted(summary["stages"]):
    if not stage.startswith("iter_") or stage == "iter_000":
      continue
    counts = workdir_lib.read_json(wd / stage / "counts.json")["counts"]
    iters[stage] = {
        "new_tokens": counts["new_tokens"], "completions": counts["completions"],
        "prompts_solved": counts["prompts_solved"], "kept": counts["kept"],
        "rounds": counts.get("rounds", 1),
        "test_pass@1": summary["stages"][stage].get("heldout_pass@1"),
        "val_pass@1": summary["stages"][stage].get("val_pass@1")}
  return {"best_iteration": summary["best_iteration"], "iterations": iters}


def paired(wd_a: pathlib.Path, wd_b: pathlib.Path, stage_a: str, stage_b: str, split: str
           ) -> dict:
  a = per_prompt_pass1(wd_a / stage_a, split)
  b = per_prompt_pass1(wd_b / stage_b, split)
  if set(a) != set(b):
    raise SystemExit(f"the arms evaluated different {split} prompts: {len(a)} and {len(b)}")
  ids = sorted(a)
  d = evaluation.paired_differences({"pass@1": [b[i] for i in ids]},
                                    {"pass@1": [a[i] for i in ids]})["pass@1"]
  return {**d, "prompts": len(ids), "a": float(np.mean([a[i] for i in ids])),
          "b": float(np.mean([b[i] for i in ids]))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--gin_file", required=True)
  ap.add_argument("--rounds", type=int, default=4, help="arm B's LoopConfig.adaptive_rounds")
  ap.add_argument("--out", required=True, help="folder for both arms' workdirs and ab.json")
  args, flags = ap.parse_known_args(argv)
  bad = [f for f in flags if not f.startswith("--gin.")]
  if bad:
    ap.error(f"unrecognised arguments {bad}: only --gin.X=V flags pass to both arms")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  walls = {name: run_arm(out, name, args.gin_file, flags, rounds)
           for name, rounds in (("fixed", 0), ("adaptive", args.rounds))}
  arms = {name: arm_summary(out / name) for name in walls}
  best = {name: f"iter_{arms[name]['best_iteration']:03d}" for name in arms}
  result = {"gin_file": args.gin_file, "flags": flags, "rounds": args.rounds,
            "wall_s": {k: round(v, 1) for k, v in walls.items()}, "arms": arms,
            "best": best, "host": os.uname().nodename}
  for split in ("heldout", "val"):
    result[f"best_{split}"] = paired(out / "fixed", out / "adaptive", best["fixed"],
                                     best["adaptive"], split)
    result[f"per_iteration_{split}"] = {
        stage: paired(out / "fixed", out / "adaptive", stage, stage, split)
        for stage in arms["fixed"]["iterations"] if stage in arms["adaptive"]["iterations"]}
  (out / "ab.json").write_text(json.dumps(result, indent=1))

  print("\n| iteration | arm | rounds | generated tokens | completions | prompts solved | kept | "
        "val pass@1 | test pass@1 |\n|---|---|---|---|---|---|---|---|---|")
  for stage in arms["fixed"]["iterations"]:
    for name in arms:
      m = arms[name]["iterations"].get(stage)
      if m:
        print(f"| {stage} | {name} | {m['rounds']} | {m['new_tokens']:,} | {m['completions']:,} "
              f"| {m['prompts_solved']} | {m['kept']} | {100 * m['val_pass@1']:.1f} | "
              f"{100 * m['test_pass@1']:.1f} |")
  print()
  for split, label in (("heldout", "test"), ("val", "validation")):
    for stage, d in result[f"per_iteration_{split}"].items():
      print(f"{stage} {label} pass@1, adaptive - fixed: {100 * d['difference']:+.1f} points "
            f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] over {d['prompts']} prompts")
    d = result[f"best_{split}"]
    print(f"best by validation ({best['adaptive']} vs {best['fixed']}) {label} pass@1: "
          f"{100 * d['b']:.1f} vs {100 * d['a']:.1f}, {100 * d['difference']:+.1f} points "
          f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]")
  print(f"\nwall time: fixed {walls['fixed']:.0f} s, adaptive {walls['adaptive']:.0f} s")


if __name__ == "__main__":
  main()
