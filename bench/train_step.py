"""Train tokens/s of our sharded train step vs Hugging Face transformers (torch), same model.

Both sides get the same architecture (a preset's config, randomly initialised: a train step's
speed does not depend on the weights' values), the same batch shape, AdamW, float32 unless
--bf16. On a GPU, also prints our step's MFU (model FLOPs utilisation).

  .venv/bin/python bench/train_step.py --preset smollm2-135m --batch 4 --seq 128 --steps 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.training import state as state_lib
from rest_jax.training import step as training
from rest_jax.models import PRESETS, init_params

# bf16 dense peak by device kind, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5e": 197e12,
              "TPU v4": 275e12}


def flops_per_token(cfg) -> float:
  """6N: the matmul FLOPs of a forward and backward per token (attention's quadratic term is
  left out, as is usual for short sequences; the tied output layer counts once in N)."""
  return 6 * cfg.num_params()


def batch_of(batch, seq, vocab, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": np.ones((batch, seq), np.float32),
          "decoder_positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1)),
          "decoder_segment_ids": np.ones((batch, seq), np.int32)}


def bench_ours(cfg, batch, seq, steps, remat):
  mesh = mesh_lib.create_mesh((1, -1, 1))
  graphdef, params = init_params(cfg, mesh, remat=remat)
  opt = training.make_optimizer(learning_rate=1e-4, total_steps=steps + 1)
  state = state_lib.create_state(mesh, params, opt)
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, params, opt),
                                  mesh)
  data = batch_of(batch, seq, cfg.vocab_size)
  t0 = time.perf_counter()
  state, m = step(state, data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, data)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  return {"step_s": dt, "tokens_per_s": batch * seq / dt, "compile_s": compile_s,
          "loss": float(m["loss"])}


def bench_hf(cfg, batch, seq, steps, bf16):
  import torch
  import transformers
  torch.manual_seed(0)
  if cfg.family == "llama":
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings)
    model = transformers.LlamaForCausalLM(hf_cfg)
  else:
    raise SystemExit(f"--hf comparison is implemented for llama-family presets, not {cfg.family}")
  if bf16:
    model = model.to(torch.bfloat16)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  data = batch_of(batch, seq, cfg.vocab_size)
  inputs = torch.tensor(data["decoder_input_tokens"], dtype=torch.long)
  labels = torch.tensor(data["decoder_target_tokens"], dtype=torch.long)

  def one():
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

  one()  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = one()
  dt = (time.perf_counter() - t0) / steps
  return {"step_s": dt, "tokens_per_s": batch * seq / dt, "loss": loss,
          "torch_threads": torch.get_num_threads()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="smollm2-135m")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--bf16", action="store_true", help="bf16 compute (ours) / bf16 model (HF)")
  ap.add_argument("--no_hf", action="store_true", help="skip the transformers side")
  ap.add_argument("--remat", action="store_true",
                  help="recompute each layer's activations in the backward pass (less memory)")
  args = ap.parse_args()
  cfg = PRESETS[args.preset]
  if args.bf16:
    cfg = cfg.replace(dtype="bfloat16")
  dev = jax.devices()[0]
  out = {"preset": args.preset, "batch": args.batch, "seq": args.seq, "bf16": args.bf16,
         "device": f"{jax.device_count()}x {dev.device_kind}", "host": platform.node(),
         "remat": args.remat, "ours": bench_ours(cfg, args.batch, args.seq, args.steps, args.remat)}
  if dev.platform == "gpu":
    peak = next((v for k, v in PEAK_FLOPS.items() if k in dev.device_kind), None)
    if peak:
      achieved = flops_per_token(cfg) * out["ours"]["tokens_per_s"]
      out["ours"]["mfu"] = achieved / (peak * jax.device_count())
  if not args.no_hf:
    out["transformers"] = bench_hf(cfg, args.batch, args.seq, args.steps, args.bf16)
    out["ratio_ours_over_hf"] = out["ours"]["tokens_per_s"] / out["transformers"]["tokens_per_s"]
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
