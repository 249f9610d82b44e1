"""`rest-jax export --checkpoint C --out DIR`: a Hugging Face safetensors directory.

`--checkpoint` takes an orbax checkpoint (or anything `--model` takes elsewhere: a preset, a
GGUF file, a Hugging Face directory). The result loads with `transformers`
(`AutoModelForCausalLM.from_pretrained(DIR)`, `AutoTokenizer.from_pretrained(DIR)`).
"""

from __future__ import annotations

import json


def add_arguments(parser):
  parser.add_argument("--checkpoint", required=True,
                      help="an orbax checkpoint (step directory, or the directory of steps: "
                           "the latest), a .gguf file, a Hugging Face directory, "
                           "hf://ORG/NAME[@REVISION] or a preset")
  parser.add_argument("--out", required=True, help="the directory to write")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="dtype of the exported tensors")


def main(args) -> int:
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.hf_export import export_hf
  from rest_jax.models.loading import load_model
  loaded = load_model(args.checkpoint, mesh_lib.create_mesh((1, -1, 1)))
  out = export_hf(loaded, args.out, dtype=args.dtype)
  print(json.dumps({"source": loaded.source, "out": out, "family": loaded.config.family,
                    "params": loaded.config.num_params(), "dtype": args.dtype}))
  return 0
