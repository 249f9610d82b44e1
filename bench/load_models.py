"""Load time of each shipped model: `python bench/load_models.py [--devices N] [--repeat R]`.

For SmolLM2-135M-Instruct (GGUF Q4_1) and Gemma 3 270M (GGUF Q4_K_M) it times, separately:
finding the file in its package (Gemma: assembling it from the part packages the first time,
then a cached, verified copy), parsing the metadata and building the tokenizer, and
dequantising + streaming the weights onto the mesh (all local devices on `fsdp`), then one
jitted forward pass of 32 tokens as a check. Prints one JSON line per model and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--devices", type=int, default=1,
                      help="simulated CPU devices (XLA host platform device count)")
  parser.add_argument("--repeat", type=int, default=2)
  parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--fresh_cache", action="store_true",
                      help="assemble Gemma's GGUF into a new temporary cache (times the first "
                           "load after installing the package)")
  args = parser.parse_args(argv)
  if args.fresh_cache:
    import tempfile
    os.environ["REST_JAX_CACHE"] = tempfile.mkdtemp(prefix="rest_jax_cache_")
  if args.devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  from flax import nnx

  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.gguf_import import GGUFModel
  from rest_jax.models.loading import packaged_gguf
  from rest_jax.models.weights import check_vocab, stream_params

  mesh = mesh_lib.create_mesh((1, -1, 1))
  print(json.dumps({"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                    "devices": len(jax.devices()), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "jax": jax.__version__}))
  for name in args.models.split(","):
    for r in range(args.repeat):
      t0 = time.perf_counter()
      path = packaged_gguf(name)
      t1 = time.perf_counter()
      model = GGUFModel(path)
      cfg = model.config().replace(dtype=args.dtype, param_dtype=args.dtype)
      tokenizer = model.tokenizer()
      check_vocab(cfg, tokenizer, path)
      t2 = time.perf_counter()
      graphdef, params = stream_params(cfg, mesh, model, config_origin=path)
      jax.block_until_ready(params)
      t3 = time.perf_counter()
      ids = np.asarray([tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)
                        [:32]], np.int32)
      fwd = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)[0])
      with jax.set_mesh(mesh):
        logits = np.asarray(fwd(params, ids))
      t4 = time.perf_counter()
      assert np.isfinite(logits).all()
      print(json.dumps({
          "model": name, "repeat": r, "file_mb": round(os.path.getsize(path) / 2 ** 20, 1),
          "params_m": round(cfg.num_params() / 1e6, 1), "dtype": args.dtype,
          "locate_s": round(t1 - t0, 2), "metadata_tokenizer_s": round(t2 - t1, 2),
          "weights_s": round(t3 - t2, 2), "total_load_s": round(t3 - t0, 2),
          "first_forward_s": round(t4 - t3, 2)}))
      del params
  return 0


if __name__ == "__main__":
  sys.exit(main())
