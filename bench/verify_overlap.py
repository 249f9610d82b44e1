"""Generate + Verify with and without verifying shard s while shard s + 1 samples.

demo_code's Generate (the programs task, K = 4, 64 prompts per shard, 64 slots, 112 new
tokens, T = 0.7, top-k 40) over its 192 train prompts, through `generate.run_shards`: the same
samples and verdicts both ways (checked), wall time compared in the same process, arms
alternated (ABBA) against drift.

  .venv/bin/python bench/verify_overlap.py [--model tiny|CHECKPOINT] [--repeats 2]

`--model` takes what `--model` takes everywhere; a trained base (e.g. a demo_code run's
`WORKDIR/checkpoints/base`) writes programs that run their tests, which a random `tiny` does
not, so its verification costs what a real run's does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import gin


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="tiny")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--prompts", type=int, default=192)
  args = ap.parse_args()

  from rest_jax.loop import generate
  from rest_jax.models import loading
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.sampling.sampler import Sampler, SamplingParams
  from rest_jax.tasks import get_task
  from rest_jax.verifiers.pool import VerifierPool

  gin.parse_config(["programs_task.steps = (1, 2)", "programs_task.kinds = ('list',)",
                    "programs_task.num_train = 224", "programs_task.num_test = 64"])
  mesh = mesh_lib.create_mesh((1, -1, 1))
  model = loading.load_model(args.model, mesh, seed=0)
  task = get_task("programs", tokenizer=model.tokenizer)
  problems = task.problems("train")[:args.prompts]
  sampler = Sampler(model.graphdef, model.config, model.tokenizer, mesh, num_slots=64)
  params = sampler.serving_params(model.params)
  sampling = SamplingParams(temperature=0.7, top_k=40, max_new_tokens=112)
  results = {True: [], False: []}
  with VerifierPool() as pool, tempfile.TemporaryDirectory() as tmp:
    kw = dict(sampler=sampler, params=params, tokenizer=model.tokenizer, pool=pool,
              num_samples=4, sampling=sampling, seed=0, prompts_per_shard=64)
    generate.run_shards(problems[:64], f"{tmp}/warm", desc="warm-up", **kw)  # compiles
    order = [False, True, True, False] * args.repeats
    rows_of = {}
    for n, overlap in enumerate(order):
      t0 = time.perf_counter()
      rows, stats = generate.run_shards(problems, f"{tmp}/run{n}", desc=f"overlap={overlap}",
                                        overlap=overlap, **kw)
      stats["measured_s"] = time.perf_counter() - t0
      results[overlap].append(stats)
      rows_of.setdefault(overlap, [(r["prompt_id"], r["sample_idx"], r["completion"],
                                    r["verdict"]) for r in rows])
    assert rows_of[True] == rows_of[False], "overlap changed the samples or verdicts"
    passed = sum(v == "pass" for *_, v in rows_of[True])
  out = {}
  for overlap, runs in results.items():
    mean = lambda k: sum(r[k] for r in runs) / len(runs)
    out["overlap" if overlap else "in turn"] = {
        "wall_s": round(mean("wall_s"), 2), "sample_s": round(mean("sample_s"), 2),
        "verify_s": round(mean("verify_s"), 2), "runs": len(runs)}
  out["speedup"] = round(out["in turn"]["wall_s"] / out["overlap"]["wall_s"], 3)
  out["completions"] = len(rows_of[True])
  out["passed"] = passed
  out["model"] = args.model
  print(json.dumps(out))


if __name__ == "__main__":
  main()
