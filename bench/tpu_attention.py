"""Per-chip memory of the Improve train step compiled for a TPU slice, XLA attention beside
Pallas splash attention (compile only: libtpu on any machine, no TPU needed).

  .venv/bin/python bench/tpu_attention.py [--topology v5e:2x2] [--batch 8] [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from rest_jax.models import params as params_lib  # noqa: E402
from rest_jax.models.config import ModelConfig, gemma3_local_layers  # noqa: E402
from rest_jax.runtime import mesh as mesh_lib  # noqa: E402
from rest_jax.training import state as state_lib  # noqa: E402
from rest_jax.training import step as training  # noqa: E402

FAMILIES = {
    "llama": dict(family="llama"),
    "gemma3": dict(family="gemma3", sliding_window=512, local_layers=gemma3_local_layers(2, 2),
                   norm_scale_offset=1.0, qk_norm=True, post_norms=True),
}


def compile_step(mesh, family, attention, batch, seq):
  cfg = ModelConfig(vocab_size=4096, num_layers=2, embed_dim=512, num_heads=8, num_kv_heads=4,
                    head_dim=128, mlp_dim=1024, max_seq_len=seq, dtype="bfloat16",
                    attention=attention, **FAMILIES[family])
  graphdef, abstract = params_lib.abstract_params(cfg, remat=True)
  opt = training.make_optimizer()
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, abstract, opt),
                                  mesh)
  sh = mesh_lib.batch_sharding(mesh, 2)
  data = {k: jax.ShapeDtypeStruct((batch, seq), jnp.float32 if k == "decoder_loss_weights"
                                  else jnp.int32, sharding=sh) for k in training.BATCH_KEYS}
  t0 = time.perf_counter()
  compiled = step.lower(state_lib.abstract_state(mesh, abstract, opt), data).compile()
  return compiled, time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--topology", default="v5e:2x2")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=2048)
  args = ap.parse_args()
  topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology,
                                      chips_per_host_bounds=(2, 2, 1))
  mesh = mesh_lib.create_mesh((1, -1, 1), devices=topo.devices)
  for family in FAMILIES:
    for attention in ("xla", "splash"):
      compiled, seconds = compile_step(mesh, family, attention, args.batch, args.seq)
      m = compiled.memory_analysis()
      print(json.dumps({"topology": args.topology, "family": family, "attention": attention,
                        "batch": args.batch, "seq": args.seq, "compile_s": round(seconds, 1),
                        "temp_mib": round(m.temp_size_in_bytes / 2**20, 1),
                        "kernels": compiled.as_text().count("tpu_custom_call")}), flush=True)


if __name__ == "__main__":
  main()
