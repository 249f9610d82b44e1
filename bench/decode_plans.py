"""Generate's decode on TPU slices, compile only: before and after the serving layout and the
shared prompt store. `python bench/decode_plans.py`.

For each preset and slice: the math template (`runs/rest_em_math.gin`, FSDP mesh) on GSM8K's
few-shot prompts, K = 32, 512 new tokens, bfloat16 compute. For each side it finds the largest
slot count whose sampler programs compile within the chip's memory, and reports the decode
estimate there:

* `before`: `--baseline_rev` (default a7307bf) from a git worktree, slots 512, 256, ... until
  one fits. Its own estimate (which counted no collective), and the same estimate with the
  collective bytes of its compiled decode counted (this checkout's HLO walk,
  `loop/hlo_collectives.py`, at the chip's ICI bandwidth).
* `after`: this checkout's `rest-jax plan` (it counts the collectives itself) at the largest of
  `--slots` that fits, the greedy evaluation's prompt rows capped at Generate's
  (`Sampler.prompt_rows = slots / 16`) so that it is Generate's memory that is sized.

Every row is one `rest-jax plan` process or a few; libtpu compiles for one TPU generation per
process.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `rest-jax plan` with the decode program's HLO written to $HLO_DIR.
_DRIVER = """
import os, sys
import rest_jax.sampling.sampler as S
orig = S.Sampler.plan
def keep(self, *a, **k):
  out = orig(self, *a, **k)
  n = len(os.listdir(os.environ["HLO_DIR"]))
  open(os.path.join(os.environ["HLO_DIR"], f"decode_{n}.txt"), "w").write(out["decode"].as_text())
  return out
S.Sampler.plan = keep
from rest_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _plan(repo: str, preset: str, topology: str, slots: int, extra=()):
  flags = ["plan", "--gin_file=runs/rest_em_math.gin", f"--gin.BASE_MODEL='{preset}'",
           "--gin.MESH=(1, -1, 1)", "--gin.TASK='gsm8k'", "--gin.LoopConfig.num_samples=32",
           "--gin.LoopConfig.max_new_tokens=512", f"--gin.LoopConfig.sampler_slots={slots}",
           f"--topology={topology}", "--only=sampler", "--json", "--no_suggest", *extra]
  with tempfile.TemporaryDirectory() as hlo:
    r = subprocess.run([sys.executable, "-c", _DRIVER, *flags], capture_output=True, text=True,
                       cwd=repo, env={**os.environ, "PYTHONPATH": repo, "HLO_DIR": hlo,
                                      "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    texts = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(f"{hlo}/*.txt"))]
  try:
    plan = json.loads(r.stdout)
  except json.JSONDecodeError as e:
    raise SystemExit(f"plan failed ({repo}, {preset}, {topology}, {slots}):\n"
                     f"{r.stderr[-3000:]}") from e
  return plan, texts, r.stderr


def _decode(plan: dict) -> dict | None:
  """The decode program of the placement the plan chose (or the only one)."""
  chosen = plan.get("sample_placement")
  decodes = [p for p in plan["programs"] if p["name"] == "decode"]
  for p in decodes:
    if p.get("placement", "") in ("", chosen):
      return p
  return decodes[0] if decodes else None


def before(repo: str, preset: str, topology: str) -> dict:
  sys.path.insert(0, REPO)
  from rest_jax.loop import hlo_collectives
  from rest_jax.runtime import tpu_slices
  chip = tpu_slices.parse(topology).chip
  for slots in (512, 256, 128, 64, 32, 16):
    plan, texts, _ = _plan(repo, preset, topology, slots)
    if not plan["fits"]:
      continue
    d = _decode(plan)
    per_host = d.get("placement") == "per_host"
    chips = plan["chips"] // plan["hosts"] if per_host else plan["chips"]
    est = d["estimate"]
    # Several hosts: the per-host decode compiles first, the global one second.
    text = texts[0] if per_host else texts[-1]
    coll = sum(hlo_collectives.traffic_by_kind(text, chips).values()) / 8   # 8 steps a call
    step = est["step_s"] + coll / chip.ici_bandwidth
    per_chip_slots = slots / chips
    return {"slots": slots, "per_chip_gib": d["per_chip_bytes"] / 2**30,
            "temp_gib": d["temp_bytes"] / 2**30,
            "tok_s_chip": est["tokens_per_s_per_chip"],
            "tok_s_chip_with_collectives": per_chip_slots / step,
            "collective_mib_per_step": coll / 2**20}
  return {"slots": 0}


def after(preset: str, topology: str, candidates) -> dict:
  """The largest of `candidates` (descending) whose sampler programs fit, with the greedy
  evaluation's prompt rows capped at Generate's (`Sampler.prompt_rows = slots / 16`), so that
  it is Generate's layout that is sized."""
  for slots in candidates:
    plan, _, _ = _plan(REPO, preset, topology, slots, [f"--gin.Sampler.prompt_rows={slots // 16}"])
    if plan["fits"]:
      break
  else:
    return {"slots": 0}
  d = _decode(plan)
  e = d["estimate"]
  return {"slots": slots, "per_chip_gib": d["per_chip_bytes"] / 2**30,
          "temp_gib": d["temp_bytes"] / 2**30, "tok_s_chip": e["tokens_per_s_per_chip"],
          "collective_mib_per_step": e["collective_bytes_per_step"] / 2**20,
          "layout": f"{e['store_rows']}x{e['group_size']}, tensor={e['tensor_parallel']}",
          "placement": d.get("placement") or "one host"}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rows", default="llama3-8b@v5e-8,qwen2.5-7b@v5e-8,gemma3-1b@v5e-8,"
                                    "llama3-8b@v5p-64")
  ap.add_argument("--baseline_rev", default="a7307bf")
  ap.add_argument("--slots", default="2048,1536,1024,768,512,256",
                  help="slot counts tried after the change, largest first")
  args = ap.parse_args()
  print("| preset | slice | before: slots that fit | before: est. tok/s/chip (as planned / "
        "collectives counted) | after: slots that fit | after: per-chip, temp | after: "
        "est. tok/s/chip (collectives counted) | after: ICI MiB/step |", flush=True)
  print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    worktree = os.path.join(tmp, "baseline")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", worktree,
                    args.baseline_rev], check=True, capture_output=True)
    try:
      for row in args.rows.split(","):
        preset, topology = row.split("@")
        b = before(worktree, preset, topology)
        a = after(preset, topology, [int(x) for x in args.slots.split(",")])
        print(json.dumps({"preset": preset, "topology": topology, "before": b, "after": a}),
              file=sys.stderr, flush=True)
        bt = (f"{b['tok_s_chip']:,.0f} / {b['tok_s_chip_with_collectives']:,.0f}"
              if b["slots"] else "-")
        at = (f"{a['per_chip_gib']:.1f} GiB, {a['temp_gib']:.2f} GiB" if a["slots"] else "-")
        print(f"| {preset} | {topology} | {b['slots']} | {bt} | {a['slots']} "
              f"({a.get('layout', '')}; {a.get('placement', '')}) | {at} | "
              f"{a.get('tok_s_chip', 0):,.0f} | {a.get('collective_mib_per_step', 0):,.0f} |",
              flush=True)
    finally:
      subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree],
                     capture_output=True)


if __name__ == "__main__":
  main()
