"""`rest-jax logprobs --model M --text T`: per-token log-probabilities as JSON.

Prints `{"model", "tokens", "token_strings", "logprobs", "sum_logprob"}`: the ids the text
encodes to (the model's BOS first when its tokenizer adds one), each token's string, and
log p(token_i | tokens_<i) (null for the first token, which nothing predicts). Meant for
parity checks against other implementations (transformers, llama.cpp).
"""

from __future__ import annotations

import json

import numpy as np

from rest_jax.commands.errors import CommandError  # one line on stderr, exit status 2


def add_arguments(parser):
  parser.add_argument("--model", required=True,
                      help="a preset name, a .gguf file, a Hugging Face directory, "
                           "hf://ORG/NAME[@REVISION] or an orbax checkpoint")
  parser.add_argument("--text", required=True, help="the text to score")
  parser.add_argument("--chat", action="store_true",
                      help="wrap the text as one user message with the model's chat template")
  parser.add_argument("--no_bos", action="store_true", help="do not prepend the BOS token")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--seed", type=int, default=0, help="for presets without weights")


def token_logprobs(loaded, ids) -> np.ndarray:
  """[len(ids)] float64: log p(ids[i] | ids[:i]), NaN at position 0."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rest_jax.runtime import mesh as mesh_lib
  tokens = np.asarray(ids, np.int32)[None, :]
  mesh = jax.tree.leaves(loaded.params)[0].sharding.mesh

  @jax.jit
  def score(params, tokens):
    logits, _ = nnx.merge(loaded.graphdef, params)(tokens)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]

  with jax.set_mesh(mesh):
    out = score(loaded.params, jax.device_put(tokens, mesh_lib.replicated(mesh)))
  return np.concatenate([[np.nan], np.asarray(jax.device_get(out), np.float64)[0]])


def logprobs_json(loaded, text: str, *, chat: bool = False, add_bos: bool = True) -> dict:
  from rest_jax import tokenizers
  tok = loaded.tokenizer
  if chat:
    text = tok.apply_chat_template([{"role": "user", "content": text}],
                                   add_generation_prompt=True)
  ids = list(tok.encode(text))
  if add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
    ids = [tok.bos_id] + ids
  if not ids:
    raise CommandError("the text encodes to no tokens")
  if len(ids) > loaded.config.max_seq_len:
    raise CommandError(f"{len(ids)} tokens exceed the model's max_seq_len "
                     f"{loaded.config.max_seq_len}")
  lp = token_logprobs(loaded, ids)
  values = [None if np.isnan(x) else float(x) for x in lp]
  return {"model": loaded.source, "tokens": [int(i) for i in ids],
          "token_strings": tokenizers.token_strings(tok, ids), "logprobs": values,
          "sum_logprob": float(np.nansum(lp))}


def main(args) -> int:
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.models.loading import load_model
  loaded = load_model(args.model, mesh_lib.create_mesh((1, -1, 1)), dtype=args.dtype,
                      seed=args.seed)
  result = logprobs_json(loaded, args.text, chat=args.chat, add_bos=not args.no_bos)
  print(json.dumps(result, ensure_ascii=False))
  return 0
