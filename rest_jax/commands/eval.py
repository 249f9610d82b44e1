"""`rest-jax eval --model M --task T ...`: a model's accuracy on a task, outside a run.

Greedy and sampled pass@1 (with bootstrap 95% intervals), pass@k and maj@k of one model on
one split, through the loop's own evaluation (`rest_jax.loop.evaluate_model`): the same
sampling seed, per-problem keys, shards and metrics, so a run's checkpoint
(`--model WORKDIR/checkpoints/iter_001`, with the run's gin config) gives exactly the figures
the run recorded in `iter_001/metrics.json`. Settings not given as flags come from
`LoopConfig` (gin), as in the run.

With `--baseline M2` the second model is evaluated on the same problems with the same draws,
and each metric's paired difference gets a paired bootstrap 95% interval (prompts resampled
once for both models).

`--output DIR` keeps `DIR/model/` and `DIR/baseline/` (`eval.json`: what was evaluated;
`eval_SPLIT/shard-*.jsonl` and `eval_SPLIT_greedy/shard-*.jsonl`: every verified sample) and
`DIR/metrics.json`; rerunning with the same DIR resumes from the finished shards. Several
processes (a pod) run like `rest-jax run`: each samples its own shards, `DIR` must be shared.
"""

from __future__ import annotations

import math
import shutil
import tempfile

from rest_jax.commands import gin_flags
from rest_jax.commands import run as run_command
from rest_jax.commands.errors import CommandError  # one line on stderr, exit status 2


def add_arguments(parser):
  parser.add_argument("--model", required=True,
                      help="what `run` takes as LoopConfig.model: a preset, a .gguf file, a "
                           "Hugging Face directory, hf://ORG/NAME[@REVISION] or a run's checkpoint "
                           "(WORKDIR/checkpoints/iter_001)")
  parser.add_argument("--baseline", default=None,
                      help="a second model, evaluated on the same problems with the same draws; "
                           "adds paired differences with paired bootstrap 95%% intervals")
  parser.add_argument("--task", default=None,
                      help="a registered task (`rest-jax tasks`; configured by gin, e.g. "
                           "--gin.jsonl_task.path=...); default LoopConfig.task")
  parser.add_argument("--split", default="test",
                      help="the split to evaluate (default test); 'train' and 'val' are the "
                           "run's own: its training prompts without a human solution, and its "
                           "validation prompts (LoopConfig, so pass the run's config.gin)")
  parser.add_argument("--num_problems", type=int, default=None,
                      help="the first N problems of the split (default: LoopConfig."
                           "num_eval_prompts for test, num_eval_train_prompts for train, as the "
                           "run evaluates them; all for other splits)")
  parser.add_argument("--num_samples", "-n", type=int, default=None,
                      help="sampled completions per problem (default LoopConfig.eval_samples)")
  parser.add_argument("-k", type=int, action="append", default=None, dest="k",
                      help="report pass@k and maj@k (repeatable; at most --num_samples; default "
                           "LoopConfig.eval_ks)")
  parser.add_argument("--temperature", type=float, default=None,
                      help="of the sampled completions (default LoopConfig.temperature)")
  parser.add_argument("--top_k", type=int, default=None, help="default LoopConfig.top_k")
  parser.add_argument("--top_p", type=float, default=None, help="default LoopConfig.top_p")
  parser.add_argument("--max_new_tokens", type=int, default=None,
                      help="default LoopConfig.max_new_tokens")
  parser.add_argument("--seed", type=int, default=None,
                      help="default LoopConfig.seed (a run's evaluations all draw from it)")
  parser.add_argument("--greedy", action="store_true",
                      help="greedy completions only (no sampled ones)")
  parser.add_argument("--output", default=None,
                      help="directory for metrics.json and the samples; rerunning with the same "
                           "one resumes (default: a temporary directory, removed at the end)")
  gin_flags.add_flags(parser)
  run_command.add_process_flags(parser)


def _model_spec_error(flag: str, spec: str) -> str | None:
  """Why `spec` cannot name a model, found without loading it (None: it may)."""
  import os

  from rest_jax.models import PRESETS
  if spec in PRESETS or "://" in spec or os.path.exists(spec):
    return None
  return (f"{flag} {spec!r}: no such file or directory, and not a preset (known: "
          f"{', '.join(sorted(PRESETS))})")


def _plan(args):
  """The evaluation the flags ask for (`evaluate_model.EvalPlan`), checked before any model
  loads."""
  from rest_jax.loop import evaluate_model
  from rest_jax.loop.rest_em import LoopConfig
  from rest_jax.sampling.sampler import SamplingParams
  from rest_jax import tasks as tasks_lib

  cfg = LoopConfig(workdir=args.output or "")
  models = {"model": args.model}
  if args.baseline is not None:
    models["baseline"] = args.baseline
  for role, spec in models.items():
    error = _model_spec_error(f"--{role}", spec)
    if error:
      raise CommandError(error)
  task = args.task or cfg.task
  if task not in tasks_lib.task_names():
    raise CommandError(f"unknown task {task!r}; registered tasks: "
                       f"{', '.join(tasks_lib.task_names())} (see `rest-jax tasks`)")
  try:  # the split, before any model loads (a chat prompt format needs a tokenizer: later)
    splits = tasks_lib.get_task(task).splits
  except ValueError as e:  # TaskDataError too
    if "needs a tokenizer" not in str(e):
      raise CommandError(f"task {task!r}: {evaluate_model.one_line(e)}") from e
    splits = None
  if args.split == "val" and cfg.num_val_prompts < 1:
    raise CommandError("--split val: LoopConfig.num_val_prompts is 0, so there is no validation "
                       "split (pass the run's --gin_file=WORKDIR/config.gin)")
  if splits is not None and args.split not in splits and not (
      args.split == "val" and "train" in splits):
    raise CommandError(f"task {task!r} has no split {args.split!r} (its splits: "
                       f"{', '.join(splits)}, and val: the run's validation prompts)")
  limit = args.num_problems
  if limit is None:
    limit = {"test": cfg.num_eval_prompts, "train": cfg.num_eval_train_prompts}.get(args.split)
  elif limit < 1:
    raise CommandError(f"--num_problems must be at least 1, got {limit}")
  num_samples = 0 if args.greedy else (
      cfg.eval_samples if args.num_samples is None else args.num_samples)
  if num_samples < 0 or (args.num_samples is not None and not args.greedy and num_samples < 1):
    raise CommandError(f"--num_samples must be at least 1, got {num_samples} (--greedy for "
                       "greedy completions only)")
  if args.k:
    for k in args.k:
      if k < 1:
        raise CommandError(f"-k must be at least 1, got {k}")
      if k > num_samples:
        hint = "--greedy samples none" if args.greedy else "raise --num_samples"
        raise CommandError(f"-k {k} is larger than the {num_samples} sampled completions per "
                           f"problem ({hint})")
    ks = tuple(sorted({1, *args.k}))
  else:
    ks = tuple(k for k in cfg.eval_ks if k <= num_samples)
  try:
    sampling = SamplingParams(
        temperature=cfg.temperature if args.temperature is None else args.temperature,
        top_k=cfg.top_k if args.top_k is None else args.top_k,
        top_p=cfg.top_p if args.top_p is None else args.top_p,
        max_new_tokens=cfg.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens,
        stop=tuple(cfg.stop))
  except ValueError as e:
    raise CommandError(str(e)) from e
  settings = evaluate_model.EvalSettings(
      num_samples=num_samples, ks=ks, sampling=sampling, prompts_per_shard=cfg.prompts_per_shard,
      seed=cfg.seed if args.seed is None else args.seed)
  return evaluate_model.EvalPlan(
      models=models, task=task, split=args.split, limit=limit, settings=settings,
      sampler_slots=cfg.sampler_slots, sample_placement=cfg.sample_placement, loop_config=cfg)


# ----------------------------------------------------------------------------- the table

_ORDER = ("greedy_pass@1", "pass@1")


def _metric_names(summary: dict, ks) -> list[str]:
  names = [k for k in _ORDER if k in summary]
  for k in ks:
    names += [f"{kind}@{k}" for kind in ("pass", "maj") if k > 1 and f"{kind}@{k}" in summary]
  return names


def _pct(value, ci=None) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  text = f"{100 * value:.1f}"
  return text if ci is None else f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _diff(d: dict) -> str:
  lo, hi = d["ci95"]
  return f"{100 * d['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def format_table(metrics: dict) -> str:
  """The printed report of `metrics.json`."""
  s = metrics["settings"]
  sp = s["sampling"]
  how = (f"{s['num_samples']} sampled completions each (T = {sp['temperature']}, top-k "
         f"{sp['top_k']}, top-p {sp['top_p']}) and a greedy one" if s["num_samples"]
         else "a greedy completion each")
  lines = [f"{metrics['task']}/{metrics['split']}: {metrics['problems']} problems, {how}; at most "
           f"{sp['max_new_tokens']} new tokens, seed {s['seed']}"]
  roles = [r for r in ("model", "baseline") if r in metrics]
  for role in roles:
    lines.append(f"{role + ':':10s}{metrics[role]['spec']}")
  summary = metrics["model"]["metrics"]
  names = _metric_names(summary, s["ks"])
  paired = metrics.get("paired", {})
  header = ["metric (%)", *roles] + (["model - baseline [paired 95% CI]", "excludes 0"]
                                     if paired else [])
  rows = []
  for name in names:
    row = [name.replace("_", " ")]
    for role in roles:
      m = metrics[role]["metrics"]
      row.append(_pct(m.get(name), m.get(f"{name}_ci95")))
    if paired:
      d = paired.get(name)
      row += [_diff(d), "yes" if d["excludes_zero"] else "no"] if d else ["–", "–"]
    rows.append(row)
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  for r in [header, *rows]:
    lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
  if paired:
    name = next((n for n in ("pass@1", "greedy_pass@1") if n in paired), None)
    if name is not None:
      d = paired[name]
      lo, hi = (100 * x for x in d["ci95"])
      verdict = (f"excludes 0: the model is {'better' if d['difference'] > 0 else 'worse'} "
                 "than the baseline" if d["excludes_zero"] else
                 "includes 0: no difference shown on these problems")
      lines.append(f"{name.replace('_', ' ')}: model - baseline = {100 * d['difference']:+.1f} "
                   f"points, paired 95% interval [{lo:+.1f}, {hi:+.1f}] {verdict}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(args) -> int:
  run_command.start_processes(args)
  gin_flags.configure_gin(args)
  from etils import epath

  from rest_jax.loop import evaluate_model
  from rest_jax.runtime import distributed as dist
  from rest_jax.runtime import workdir as workdir_lib

  plan = _plan(args)   # bad flags: CommandError, one line (cli)
  if args.output is None and dist.process_count() > 1:
    raise CommandError("--output is required with several processes (a directory every "
                       "process reads and writes, e.g. on gs://)")
  from rest_jax.runtime import storage
  if args.output:
    storage.check_writable(args.output)   # before loading any model
  temporary = None if args.output else tempfile.mkdtemp(prefix="rest_jax_eval_")
  try:
    out_dir = epath.Path(args.output or temporary)
    with storage.errors(out_dir, "write the evaluation there"):
      metrics = evaluate_model.evaluate_models(plan, out_dir)
  finally:
    if temporary is not None:
      shutil.rmtree(temporary, ignore_errors=True)
  if dist.is_writer():
    if args.output is not None:
      workdir_lib.write_json(out_dir / "metrics.json", metrics)
    print(format_table(metrics))
    if args.output is not None:
      print(f"metrics and samples: {out_dir}")
  return 0
