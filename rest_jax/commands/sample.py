"""`rest-jax sample --model M --prompt P ...`: K samples of each prompt, as JSON lines.

One line per sample on stdout: prompt index, sample index, text, token ids, finish reason and
the sum of the raw model log-probabilities of the tokens. A summary (tokens/s, compilations,
KV cache bytes) goes to stderr.
"""

from __future__ import annotations

import json
import sys

from rest_jax.commands.errors import CommandError


def _mesh_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(x) for x in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    raise CommandError(f"--mesh takes three comma-separated sizes (data,fsdp,tensor), got {text!r}")
  return shape


def add_arguments(parser):
  parser.add_argument("--model", required=True,
                      help="a preset (smollm2-135m, gemma3-270m, tiny, ...), a .gguf file, a "
                           "Hugging Face directory, hf://ORG/NAME[@REVISION] or an orbax checkpoint")
  parser.add_argument("--prompt", action="append", required=True,
                      help="prompt text; repeat the flag for several prompts")
  parser.add_argument("--num_samples", "-k", type=int, default=1, help="samples per prompt (K)")
  parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
  parser.add_argument("--top_k", type=int, default=0, help="0 = off")
  parser.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  parser.add_argument("--max_new_tokens", type=int, default=256)
  parser.add_argument("--stop", action="append", default=[],
                      help="a stop string (repeatable); the text is cut before it")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--chat", action="store_true",
                      help="wrap each prompt in the tokenizer's chat template as a user turn")
  parser.add_argument("--num_slots", type=int, default=32, help="decode rows")
  parser.add_argument("--steps_per_dispatch", type=int, default=8)
  parser.add_argument("--cache_dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="parameter and compute dtype")
  parser.add_argument("--mesh", default="1,-1,1", help="mesh shape data,fsdp,tensor")
  parser.add_argument("--truncate_prompts", action="store_true",
                      help="cut over-long prompts from the left instead of failing")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")


def encode_prompt(tokenizer, text: str) -> list[int]:
  """Token ids of a prompt, with the tokenizer's BOS in front when the model expects one."""
  ids = list(tokenizer.encode(text))
  bos = tokenizer.bos_id
  if bos is not None and (not ids or ids[0] != bos):
    ids = [bos] + ids
  return ids


def main(args) -> int:
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.sampling import sampler as sampling
  from rest_jax.models.loading import load_model

  try:  # the flags first: a bad one fails before a model loads
    params = sampling.SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, stop=tuple(args.stop))
  except ValueError as e:
    raise CommandError(f"bad sampling parameters: {e}") from e
  if args.num_samples < 1:
    raise CommandError(f"--num_samples must be >= 1, got {args.num_samples}")
  try:
    mesh = mesh_lib.create_mesh(_mesh_shape(args.mesh))
  except ValueError as e:
    raise CommandError(f"--mesh {args.mesh}: {e}") from e
  loaded = load_model(args.model, mesh, dtype=args.dtype)
  tok = loaded.tokenizer
  texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
           if args.chat else p for p in args.prompt]
  prompts = [encode_prompt(tok, t) for t in texts]
  for i, ids in enumerate(prompts):
    if not ids:
      print(f"rest-jax sample: prompt {i} encodes to no tokens", file=sys.stderr)
      return 2
  try:
    sampler = sampling.Sampler(
        loaded.graphdef, loaded.config, tok, mesh, num_slots=args.num_slots,
        steps_per_dispatch=args.steps_per_dispatch, cache_dtype=args.cache_dtype,
        truncate_prompts=args.truncate_prompts)
  except ValueError as e:
    raise CommandError(f"bad sampling parameters: {e}") from e

  def emit(index, completions):
    for c in completions:
      print(json.dumps({"prompt_index": c.prompt_index, "sample_index": c.sample_index,
                        "text": c.text, "tokens": c.tokens, "finish_reason": c.finish_reason,
                        "logprob_sum": round(c.logprob_sum, 6)}, ensure_ascii=False),
            flush=True)

  try:
    sampler.generate(loaded.params, prompts, num_samples=args.num_samples, sampling=params,
                     seed=args.seed, progress=False if args.no_progress else "sample",
                     on_prompt_done=emit)
  except ValueError as e:
    print(f"rest-jax sample: {e}", file=sys.stderr)
    return 2
  st = sampler.stats
  print(f"rest-jax sample: {st['new_tokens']} new tokens in {st['seconds']:.1f}s "
        f"({st['tokens_per_s']:.1f} tok/s, {st['compilations']} compilations, KV cache "
        f"{st['kv_cache_bytes'] / 2**20:.1f} MiB, model {loaded.source})", file=sys.stderr)
  return 0
