"""The accelerator benchmark: train MFU, batch-1 decode against the HBM roofline, sampler and
Generate throughput, shared-prefix decoding, in bf16 (float32 master weights). Run by bench/device.sh on a GPU machine;
`--dry_run` runs every section on the CPU at toy sizes, to check the script itself.

Prints one JSON object per figure and, at the end, the BENCHMARKS.md rows (also written to
`--out`). Weights are randomly initialised from the presets: speed does not depend on their
values (samples then run to max_new_tokens, which is what a throughput figure wants).

  python bench/device.py [--dry_run] [--out FILE]
                         [--sections train,decode,sampler,shared_prefix,generate]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import batch_of  # noqa: E402  (bench/train_step.py)

from rest_jax.models import PRESETS, init_params  # noqa: E402
from rest_jax.models import params as params_lib  # noqa: E402
from rest_jax.runtime import mesh as mesh_lib  # noqa: E402
from rest_jax.sampling.sampler import Sampler, SamplingParams  # noqa: E402
from rest_jax.tokenizers import ByteTokenizer  # noqa: E402
from rest_jax.training import state as state_lib  # noqa: E402
from rest_jax.training import step as training  # noqa: E402

# Published per-chip figures: bf16 dense FLOP/s and HBM bytes/s.
CHIPS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


def chip_figures(device) -> tuple[float | None, float | None]:
  return next((v for k, v in CHIPS.items() if k in device.device_kind), (None, None))


def train_flops_per_token(cfg, seq: int) -> float:
  """PaLM's count: 6N for the matmuls plus 12 * layers * heads * head_dim * seq for attention
  scores and values (forward and backward), with N the non-embedding parameters plus the
  output projection."""
  n = cfg.num_params() - (cfg.vocab_size * cfg.embed_dim if not cfg.tie_embeddings else 0)
  return 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq


def _fits(step, mesh, state, batch_size, seq, limit) -> bool:
  sh = mesh_lib.batch_sharding(mesh, 2)
  abstract = {k: jax.ShapeDtypeStruct((batch_size, seq), jnp.float32 if k ==
                                      "decoder_loss_weights" else jnp.int32, sharding=sh)
              for k in training.BATCH_KEYS}
  try:
    m = step.lower(state, abstract).compile().memory_analysis()
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      return False
    raise
  need = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return limit is None or need + m.temp_size_in_bytes < 0.9 * limit


def bench_train(preset, seq, batches, steps, log):
  mesh = mesh_lib.create_mesh((1, -1, 1))
  cfg = PRESETS[preset].replace(dtype="bfloat16", max_seq_len=max(seq, 128))
  graphdef, params = init_params(cfg, mesh, remat=True)
  opt = training.make_optimizer(learning_rate=1e-4, total_steps=steps + 10)
  state = state_lib.create_state(mesh, params, opt)
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, params, opt),
                                  mesh)
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
  shards = mesh_lib.batch_shards(mesh)
  batches = sorted({-(-b // shards) * shards for b in batches}, reverse=True)
  batch = next((b for b in batches if _fits(step, mesh, state, b, seq, limit)), None)
  if batch is None:
    return log({"figure": "train", "preset": preset, "error": f"no batch of {batches} fits"})
  data = batch_of(batch, seq, cfg.vocab_size)
  for _ in range(2):  # compile, warm up
    state, m = step(state, data)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, data)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  peak, _ = chip_figures(device)
  tok_s = batch * seq / dt
  mfu = peak and train_flops_per_token(cfg, seq) * tok_s / (peak * jax.device_count())
  return log({"figure": "train", "preset": preset, "batch": batch, "seq": seq,
              "step_s": dt, "tokens_per_s": tok_s, "mfu": mfu, "loss": float(m["loss"])})


class _NoStop:
  """A tokenizer with no stop ids: samples run to max_new_tokens (random weights)."""

  def __init__(self, vocab):
    self._tok = ByteTokenizer(vocab_size=vocab)
    self.stop_ids, self.eos_id = [], None

  def __getattr__(self, name):
    return getattr(self._tok, name)


def _sampler_model(preset):
  mesh = mesh_lib.create_mesh((1, -1, 1))
  cfg = PRESETS[preset].replace(dtype="bfloat16")
  graphdef, params = init_params(cfg, mesh)
  return mesh, cfg, graphdef, params


def bench_decode_b1(preset, cache_len, log):
  mesh, cfg, graphdef, params = _sampler_model(preset)
  sampler = Sampler(graphdef, cfg, _NoStop(cfg.vocab_size), mesh, num_slots=1,
                    steps_per_dispatch=16, cache_dtype="bfloat16")
  params = sampler.serving_params(params)
  per_step, cache_bytes = sampler.time_decode(params, cache_len=cache_len,
                                              position=cache_len // 2, dispatches=10)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  needed = param_bytes + cache_bytes / 2   # every weight once, the cache up to the position
  _, bandwidth = chip_figures(jax.devices()[0])
  return log({"figure": "decode_b1", "preset": preset, "ms_per_step": per_step * 1e3,
              "tokens_per_s": 1 / per_step, "bytes_needed": needed,
              "achieved_gbs": needed / per_step / 1e9,
              "roofline_fraction": bandwidth and needed / per_step / bandwidth})


def bench_sampler(preset, slots, prompts, new_tokens, log):
  mesh, cfg, graphdef, params = _sampler_model(preset)
  sampler = Sampler(graphdef, cfg, _NoStop(cfg.vocab_size), mesh, num_slots=slots,
                    steps_per_dispatch=16, cache_dtype="bfloat16", max_prefill_batch=64)
  params = sampler.serving_params(params)
  rng = np.random.default_rng(0)
  ids = [list(rng.integers(32, 127, 96)) for _ in range(prompts)]
  sampling = SamplingParams(temperature=0.7, top_k=40, max_new_tokens=new_tokens)
  sampler.generate(params, ids[:slots], num_samples=1, sampling=sampling, seed=1)  # compile
  t0 = time.perf_counter()
  out = sampler.generate(params, ids, num_samples=1, sampling=sampling, seed=0)
  dt = time.perf_counter() - t0
  tokens = sum(len(c.tokens) for row in out for c in row)
  return log({"figure": "sampler", "preset": preset, "slots": slots, "prompts": prompts,
              "new_tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt})


def bench_shared_prefix(preset, prompts, k, prompt_len, new_tokens, slots, log):
  """K samples of long prompts: slots in groups of 16 sharing their prompt's row (one read
  per group per step) against groups of 1 (each slot reads its own row), in one run."""
  mesh, cfg, graphdef, params = _sampler_model(preset)
  rng = np.random.default_rng(0)
  ids = [list(rng.integers(32, 127, prompt_len)) for _ in range(prompts)]
  sampling = SamplingParams(temperature=0.7, top_k=40, max_new_tokens=new_tokens)
  rates = {}
  for group in (16, 1):
    sampler = Sampler(graphdef, cfg, _NoStop(cfg.vocab_size), mesh, num_slots=slots,
                      group_size=group, steps_per_dispatch=16, cache_dtype="bfloat16")
    served = sampler.serving_params(params)
    sampler.generate(served, ids, num_samples=k, sampling=sampling, seed=1)   # compile
    t0 = time.perf_counter()
    out = sampler.generate(served, ids, num_samples=k, sampling=sampling, seed=0)
    dt = time.perf_counter() - t0
    rates[group] = sum(len(c.tokens) for row in out for c in row) / dt
  return log({"figure": "shared_prefix", "preset": preset, "slots": slots, "prompts": prompts,
              "k": k, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "tokens_per_s": rates[16], "tokens_per_s_unshared": rates[1],
              "ratio": rates[16] / rates[1]})


def bench_generate(preset, slots, problems, k, new_tokens, workdir, log):
  """The loop's Generate + Verify phase (loop/generate.py) on arithmetic problems."""
  from rest_jax.loop import generate
  from rest_jax.tasks import get_task
  from rest_jax.verifiers import VerifierPool
  mesh, cfg, graphdef, params = _sampler_model(preset)
  tok = _NoStop(cfg.vocab_size)
  task = get_task("arithmetic", tokenizer=tok)
  probs = task.problems("train")[:problems]
  sampler = Sampler(graphdef, cfg, tok, mesh, num_slots=slots, steps_per_dispatch=16,
                    cache_dtype="bfloat16", max_prefill_batch=64)
  params = sampler.serving_params(params)
  sampling = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
  with VerifierPool() as pool:
    kw = dict(sampler=sampler, params=params, tokenizer=tok, pool=pool, sampling=sampling)
    generate.run_shards(probs[:max(1, slots // k)], f"{workdir}/warm", prompts_per_shard=len(probs),
                        desc="warm-up", num_samples=k, seed=1, **kw)
    _, stats = generate.run_shards(probs, f"{workdir}/run", prompts_per_shard=len(probs),
                                   desc="generate", num_samples=k, seed=0, **kw)
  return log({"figure": "generate", "preset": preset, "slots": slots, "prompts": len(probs),
              "k": k, "new_tokens": stats["new_tokens"], "sample_s": stats["sample_s"],
              "tokens_per_s": stats["new_tokens"] / stats["sample_s"]})


def rows_md(results, device, date) -> str:
  where = f"`bash bench/device.sh` · {device} · {date} · jax {jax.__version__}, bf16 compute"
  lines = [where, "", "| figure | setting | result |", "| --- | --- | --- |"]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['figure']} | {r.get('preset', '')} | {r['error']} |")
    elif r["figure"] == "train":
      mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
      lines.append(f"| train step | {r['preset']}, batch {r['batch']} x {r['seq']} | "
                   f"{r['tokens_per_s']:,.0f} tokens/s{mfu} |")
    elif r["figure"] == "decode_b1":
      frac = (f", {r['roofline_fraction']:.0%} of the HBM roofline"
              if r.get("roofline_fraction") else "")
      lines.append(f"| decode, batch 1 | {r['preset']} | {r['tokens_per_s']:,.0f} tokens/s, "
                   f"{r['achieved_gbs']:,.0f} GB/s{frac} |")
    elif r["figure"] == "sampler":
      lines.append(f"| sampler | {r['preset']}, {r['slots']} slots, {r['prompts']} prompts | "
                   f"{r['tokens_per_s']:,.0f} new tokens/s |")
    elif r["figure"] == "shared_prefix":
      lines.append(f"| shared prefix | {r['preset']}, {r['slots']} slots, {r['prompts']} "
                   f"prompts of {r['prompt_len']} tokens x K={r['k']}, {r['new_tokens']} new | "
                   f"{r['tokens_per_s']:,.0f} new tokens/s in groups of 16, "
                   f"{r['tokens_per_s_unshared']:,.0f} one slot per prompt row "
                   f"({r['ratio']:.2f}x) |")
    else:
      lines.append(f"| loop Generate | {r['preset']}, {r['slots']} slots, K={r['k']}, "
                   f"{r['prompts']} prompts | {r['tokens_per_s']:,.0f} new tokens/s |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dry_run", action="store_true", help="toy sizes (CPU): checks the script")
  ap.add_argument("--sections", default="train,decode,sampler,shared_prefix,generate")
  ap.add_argument("--out", default=None, help="write the BENCHMARKS.md rows here too")
  ap.add_argument("--workdir", default="/tmp/rest_jax_device_bench")
  args = ap.parse_args(argv)
  sections = set(args.sections.split(","))
  results = []

  def log(row):
    print(json.dumps(row), flush=True)
    results.append(row)
    return row

  dry = args.dry_run
  train_presets = ["tiny"] if dry else ["smollm2-135m", "gemma3-1b"]
  seq = 64 if dry else 2048
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  if "train" in sections:
    for preset in train_presets:
      bench_train(preset, seq, (4,) if dry else (8, 16, 32, 64, 128), 2 if dry else 10, log)
  if "decode" in sections:
    for preset in (["tiny"] if dry else ["smollm2-135m", "gemma3-1b"]):
      bench_decode_b1(preset, 256 if dry else 2048, log)
  if "sampler" in sections:
    for slots in ((4,) if dry else (64, 256)):
      bench_sampler("tiny" if dry else "smollm2-135m", slots, 2 * slots, 16 if dry else 256,
                    log)
  if "shared_prefix" in sections:
    bench_shared_prefix("tiny" if dry else "smollm2-135m", 2 if dry else 16, 4 if dry else 16,
                        24 if dry else 1024, 8 if dry else 256, 8 if dry else 256, log)
  if "generate" in sections:
    bench_generate("tiny" if dry else "smollm2-135m", 8 if dry else 256, 4 if dry else 256,
                   2 if dry else 8, 8 if dry else 256, f"{args.workdir}/{stamp}", log)
  dev = jax.devices()[0]
  device = f"{jax.device_count()}x {dev.device_kind} ({platform.node()})"
  md = rows_md(results, device, datetime.date.today().isoformat())
  print(md)
  if args.out:
    with open(args.out, "a", encoding="utf-8") as f:
      f.write(md + "\n")
  return 0 if results and not any("error" in r for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
