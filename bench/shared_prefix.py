"""Generate on shared prompts, three ways in one run: `python bench/shared_prefix.py`.

SmolLM2-135M-Instruct (the packaged GGUF, float32 on every side) samples K completions of each
of a few GSM8K 4-shot prompts (the `gsm8k` task's plain few-shot format, ~700-900 tokens),
T=0.7, top-k 40, exactly N new tokens (no stop ids on any side):

* `shared`: this checkout's sampler (a group of slots reads its prompt once per step);
* `copied`: the sampler of `--baseline_rev` (default a7307bf, before the shared-prompt
  layout: each sample's slot holds a copy of its prompt's cache), from a git worktree;
* `transformers`: `generate(num_return_sequences=K)` on all prompts at once.

Each side runs in its own process (peak RSS is its own). Ours run `generate` twice on the
same inputs and time the second (compiled); transformers runs a warm-up first. The parent
prints JSON lines and a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
# bench/sampler.py: the GGUF through transformers, a tokenizer view without stop ids, peak RSS.
from sampler import _NoStop, _hf_model, _rss_mib  # noqa: E402


def make_prompts(args) -> dict:
  sys.path.insert(0, REPO)
  from rest_jax.models.loading import load_model
  from rest_jax.tasks import get_task
  from rest_jax.tasks import sft as sft_lib
  tok = load_model(args.preset).tokenizer
  task = get_task("gsm8k", tokenizer=tok)
  ids = [sft_lib.encode_prompt(tok, p.prompt) for p in task.problems("test")[:args.prompts]]
  return {"prompts": ids, "pad_id": tok.pad_id}


def run_ours(args, data, side: str) -> dict:
  import jax
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.loading import load_model
  from rest_jax.sampling.sampler import Sampler, SamplingParams
  mesh = mesh_lib.create_mesh((1, -1, 1))
  loaded = load_model(args.preset, mesh)
  sampler = Sampler(loaded.graphdef, loaded.config, _NoStop(loaded.tokenizer), mesh,
                    num_slots=args.slots, steps_per_dispatch=args.steps_per_dispatch)
  sampling = SamplingParams(temperature=0.7, top_k=40, max_new_tokens=args.new_tokens)
  prompts = data["prompts"]
  for seed in (1, 2):   # the first compiles
    out = sampler.generate(loaded.params, prompts, num_samples=args.k, sampling=sampling,
                           seed=seed)
  st = sampler.stats
  assert all(len(c.tokens) == args.new_tokens for r in out for c in r)
  n = len(prompts) * args.k * args.new_tokens
  return {"side": side, "seconds": st["seconds"], "new_tokens": n,
          "tokens_per_s": n / st["seconds"], "kv_cache_bytes": st["kv_cache_bytes"],
          "peak_rss_mib": _rss_mib(), "device": jax.devices()[0].device_kind,
          "sampler_stats": {k: v for k, v in st.items() if isinstance(v, (int, float))}}


def run_hf(args, data) -> dict:
  import torch
  torch.manual_seed(0)
  model = _hf_model(args.preset)
  pad, prompts = data["pad_id"], data["prompts"]
  width = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), width), pad, dtype=torch.long)
  mask = torch.zeros((len(prompts), width), dtype=torch.long)
  for i, p in enumerate(prompts):   # left padding
    ids[i, width - len(p):] = torch.tensor(p)
    mask[i, width - len(p):] = 1
  settings = dict(do_sample=True, temperature=0.7, top_k=40, pad_token_id=pad,
                  num_return_sequences=args.k)
  with torch.inference_mode():
    model.generate(input_ids=ids[:1], attention_mask=mask[:1], max_new_tokens=2, **settings)
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, **settings)
    secs = time.perf_counter() - t0
  assert out.shape[1] - width == args.new_tokens
  n = len(prompts) * args.k * args.new_tokens
  return {"side": "transformers", "seconds": secs, "new_tokens": n, "tokens_per_s": n / secs,
          "peak_rss_mib": _rss_mib(), "threads": torch.get_num_threads()}


def _child(args, side: str, data_path: str, repo: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--data={data_path}",
         f"--prompts={args.prompts}", f"--k={args.k}", f"--new_tokens={args.new_tokens}",
         f"--slots={args.slots}", f"--steps_per_dispatch={args.steps_per_dispatch}",
         f"--preset={args.preset}"]
  env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
  if r.returncode:
    raise SystemExit(f"{side} failed:\n{r.stderr[-3000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="smollm2-135m")
  ap.add_argument("--prompts", type=int, default=4)
  ap.add_argument("--k", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--slots", type=int, default=64)
  ap.add_argument("--steps_per_dispatch", type=int, default=8)
  ap.add_argument("--baseline_rev", default="a7307bf")
  ap.add_argument("--sides", default="shared,copied,transformers")
  ap.add_argument("--side", help=argparse.SUPPRESS)
  ap.add_argument("--data", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.side:
    with open(args.data, encoding="utf-8") as f:
      data = json.load(f)
    out = run_hf(args, data) if args.side == "transformers" else run_ours(args, data, args.side)
    print(json.dumps(out))
    return
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    data_path = os.path.join(tmp, "prompts.json")
    with open(data_path, "w", encoding="utf-8") as f:
      json.dump(make_prompts(args), f)
    worktree = os.path.join(tmp, "baseline")
    for side in args.sides.split(","):
      repo = REPO
      if side == "copied":
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", worktree,
                        args.baseline_rev], check=True, capture_output=True)
        repo = worktree
      try:
        rows.append(_child(args, side, data_path, repo))
      finally:
        if side == "copied":
          subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", worktree],
                         capture_output=True)
      print(json.dumps(rows[-1]), flush=True)
  by = {r["side"]: r for r in rows}
  print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.prompts} prompts x K={args.k} x {args.new_tokens} new tokens")
  print("| side | tokens/s | vs copied | vs transformers | KV cache MiB | peak RSS MiB |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    ratio = lambda o: (f"{r['tokens_per_s'] / by[o]['tokens_per_s']:.2f}x" if o in by else "-")
    kv = f"{r['kv_cache_bytes'] / 2**20:.0f}" if "kv_cache_bytes" in r else "-"
    print(f"| {r['side']} | {r['tokens_per_s']:.1f} | {ratio('copied')} | "
          f"{ratio('transformers')} | {kv} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
  main()
