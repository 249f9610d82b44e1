"""`rest-jax run`: the gin-configured entry point.

Until the ReST-EM loop lands this runs the tiny model end to end on the mesh: sharded init,
a few fine-tuning steps on procedurally generated arithmetic text, and an orbax checkpoint,
leaving `config.gin`, `metrics.jsonl` and `checkpoints/` in WORKDIR.
"""

from __future__ import annotations

import json
import random
import time

import gin
import jax
import numpy as np
from etils import epath

from rest_jax import checkpoints as ckpt_lib
from rest_jax import gin_flags
from rest_jax import mesh as mesh_lib
from rest_jax import train_state as state_lib
from rest_jax import training
from rest_jax.models import config as config_lib
from rest_jax.models import params as params_lib
from rest_jax.tokenizers import ByteTokenizer


def _arithmetic_batch(tok: ByteTokenizer, rng: random.Random, batch: int, length: int):
  inputs = np.full((batch, length), tok.pad_id, np.int32)
  targets = np.full((batch, length), tok.pad_id, np.int32)
  weights = np.zeros((batch, length), np.float32)
  for b in range(batch):
    x, y = rng.randint(0, 99), rng.randint(0, 99)
    prompt = tok.encode(f"Q: {x}+{y}=? A: ")
    ids = [tok.bos_id] + prompt + tok.encode(str(x + y)) + [tok.eos_id]
    ids = ids[:length + 1]
    inputs[b, :len(ids) - 1] = ids[:-1]
    targets[b, :len(ids) - 1] = ids[1:]
    weights[b, len(prompt):len(ids) - 1] = 1.0
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": weights, "decoder_positions": positions,
          "decoder_segment_ids": (inputs != tok.pad_id).astype(np.int32)}


@gin.configurable
def run(workdir: str = gin.REQUIRED, steps: int = 20, batch_size: int = 16,
        seq_len: int = 32, seed: int = 0) -> dict:
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  gin_flags.write_config(workdir)
  cfg = config_lib.model_config()
  mesh = mesh_lib.create_mesh()
  tok = ByteTokenizer(cfg.vocab_size)
  graphdef, params = params_lib.init_params(cfg, mesh, seed)
  optimizer = training.make_optimizer(total_steps=steps)
  state = state_lib.create_state(mesh, params, optimizer)
  step_fn = training.make_train_step(
      graphdef, optimizer, state_lib.state_shardings(mesh, params, optimizer), mesh)
  rng = random.Random(seed)
  t0 = time.time()
  with (workdir / "metrics.jsonl").open("a") as f:
    for i in range(steps):
      state, metrics = step_fn(state, _arithmetic_batch(tok, rng, batch_size, seq_len))
      row = {"step": i + 1, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
      f.write(json.dumps(row) + "\n")
  with ckpt_lib.CheckpointManager(workdir / "checkpoints" / "smoke") as mgr:
    mgr.save_state(steps, state, meta={"model": cfg.family})
    mgr.wait()
  return {"workdir": str(workdir), "mesh": mesh_lib.describe(mesh),
          "params": params_lib.param_count(params), "final_loss": row["loss"],
          "seconds": round(time.time() - t0, 2)}
