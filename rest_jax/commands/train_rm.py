"""`rest-jax train-rm --input F.jsonl|GLOB|WORKDIR --model M --output DIR`: a reward model.

Trains the transformer of `--model` with a scalar head on (prompt, completion, reward) lines,
e.g. the verifier-labelled samples a ReST-EM run leaves in its WORKDIR (an outcome reward
model), and writes a self-contained orbax checkpoint for `ReSTConfig.reward_model`. Prints one
JSON summary line, with the AUC (pass vs fail) on held-out prompts.
"""

from __future__ import annotations

import json

from rest_jax.commands.errors import CommandError  # one line on stderr, exit status 2


def add_arguments(parser):
  parser.add_argument("--input", action="append", required=True,
                      help="a JSONL file, a glob, or the WORKDIR of a run (its "
                           "iter_*/samples/shard-*.jsonl); repeatable")
  parser.add_argument("--model", required=True,
                      help="the backbone to start from: a preset, .gguf, Hugging Face directory, "
                           "hf://ORG/NAME[@REVISION] or orbax checkpoint (usually the policy's "
                           "base model)")
  parser.add_argument("--output", required=True, help="the checkpoint directory to write")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--warmup_steps", type=int, default=10)
  parser.add_argument("--loss", default="bce", choices=("bce", "mse", "pairwise"),
                      help="bce: labels in [0, 1] (verifier); mse: regression; pairwise: "
                           "Bradley-Terry on pairs of one prompt")
  parser.add_argument("--seq_len", type=int, default=256,
                      help="longer prompt + completion keep their last tokens")
  parser.add_argument("--heldout_fraction", type=float, default=0.1,
                      help="share of prompts held out for the AUC")
  parser.add_argument("--pass_threshold", type=float, default=0.5,
                      help="a reward at least this counts as a pass (AUC, balancing)")
  parser.add_argument("--head", default="last+loglik", choices=("last", "last+loglik"),
                      help="what the scalar head reads: the last hidden state, or that plus the "
                           "completion's mean log-probability under the backbone's LM head")
  parser.add_argument("--supervise", default="last", choices=("last", "completion"),
                      help="bce/mse on the last token, or on every completion token (a "
                           "token-level verifier); scores are read at the last token")
  parser.add_argument("--no_balance", action="store_true",
                      help="draw batches uniformly instead of half passes, half fails")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--mesh", default="1,-1,1", help="mesh shape data,fsdp,tensor")


def main(args) -> int:
  from etils import epath

  from rest_jax.rewards import data as reward_data
  from rest_jax.commands.sample import _mesh_shape

  for name in ("steps", "batch_size", "seq_len"):
    if getattr(args, name) < 1:
      raise CommandError(f"--{name} must be >= 1, got {getattr(args, name)}")
  if not 0.0 <= args.heldout_fraction < 1.0:
    raise CommandError(f"--heldout_fraction must be in [0, 1), got {args.heldout_fraction}")
  output = epath.Path(args.output)
  if output.is_dir() and any(output.iterdir()):
    raise CommandError(f"--output {args.output} exists and is not empty; choose a new "
                       "directory")
  examples, files = reward_data.read_inputs(args.input)   # RewardDataError: one line (cli)

  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.rewards import model as reward_model
  from rest_jax.rewards import training as reward_training
  from rest_jax.models.loading import load_model
  cfg = reward_training.RewardTrainConfig(
      steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
      warmup_steps=args.warmup_steps, loss=args.loss, seq_len=args.seq_len,
      heldout_fraction=args.heldout_fraction, pass_threshold=args.pass_threshold,
      balance=not args.no_balance, head=args.head, supervise=args.supervise, seed=args.seed)
  try:
    mesh = mesh_lib.create_mesh(_mesh_shape(args.mesh))
  except ValueError as e:
    raise CommandError(f"--mesh {args.mesh}: {e}") from e
  loaded = load_model(args.model, mesh, seed=args.seed, remat=True)
  try:   # rewards/ says what its settings or the examples lack with a ValueError
    rm = reward_model.from_policy(loaded.graphdef, loaded.params, loaded.config,
                                  loaded.tokenizer, mesh, loss=args.loss, seq_len=args.seq_len,
                                  head=args.head)
    rm, stats = reward_training.train(rm, examples, mesh, cfg)
  except ValueError as e:
    raise CommandError(str(e)) from e
  rm.meta["trained_on"] = files[:50]
  out = reward_model.save(rm, args.output, source=loaded.source)
  print(json.dumps({"output": out, "files": len(files), "model": loaded.source, **stats},
                   default=str))
  return 0
