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

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import tempfile

from rest_jax.commands import gin_flags
from rest_jax.commands import run as run_command
from rest_jax.commands.errors import CommandError  # one line on stderr, exit status 2


def add_arguments(parser):
  parser.add_argument("--model", required=True,
                      help="what `run` takes as LoopConfig.model: a preset, a .gguf file, a "
                           "Hugging Face directory or a run's checkpoint "
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


@dataclasses.dataclass
class _Plan:
  models: dict[str, str]   # role ("model", "baseline") -> spec
  task: str
  split: str
  limit: int | None
  settings: object          # evaluate_model.EvalSettings
  sampler_slots: int
  sample_placement: str = "auto"
  loop_config: object = None  # the LoopConfig: which training prompts 'train' and 'val' are


def _one_line(e: Exception) -> str:
  """The message of `e` on one line, without the "In call to configurable" lines gin adds."""
  lines = [line.strip() for line in str(e).splitlines()]
  return "; ".join(line for line in lines
                   if line and not line.startswith("In call to configurable"))


def _model_spec_error(flag: str, spec: str) -> str | None:
  """Why `spec` cannot name a model, found without loading it (None: it may)."""
  import os

  from rest_jax.models import PRESETS
  if spec in PRESETS or "://" in spec or os.path.exists(spec):
    return None
  return (f"{flag} {spec!r}: no such file or directory, and not a preset (known: "
          f"{', '.join(sorted(PRESETS))})")


def _plan(args) -> _Plan:
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
      raise CommandError(f"task {task!r}: {_one_line(e)}") from e
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
  return _Plan(models=models, task=task, split=args.split, limit=limit, settings=settings,
               sampler_slots=cfg.sampler_slots, sample_placement=cfg.sample_placement,
               loop_config=cfg)


def _fingerprint(plan: _Plan, spec: str, problems) -> dict:
  """What the samples under a role's directory depend on (its `eval.json`): the greedy
  completions on the model, the problems and the length limits; the sampled ones also on the
  draws."""
  digest = hashlib.sha256()
  for p in problems:
    digest.update(json.dumps([p.id, p.prompt, p.reference], sort_keys=True).encode())
  s = plan.settings
  greedy = {"model": spec, "task": plan.task, "split": plan.split, "problems": len(problems),
            "problems_sha256": digest.hexdigest(), "prompts_per_shard": s.prompts_per_shard,
            "max_new_tokens": s.sampling.max_new_tokens, "stop": list(s.sampling.stop)}
  sampled = {**greedy, "num_samples": s.num_samples, "temperature": s.sampling.temperature,
             "top_k": s.sampling.top_k, "top_p": s.sampling.top_p, "seed": s.seed}
  return {"greedy": greedy, "sampled": sampled if s.num_samples else None}


def _check_resume(role_dir, fingerprint: dict) -> None:
  """Refuses a directory holding samples of another evaluation; records this one.

  A greedy-only evaluation and a full one of the same model share the greedy shards.
  """
  from rest_jax.runtime import distributed as dist
  from rest_jax.runtime import workdir as workdir_lib
  path = role_dir / "eval.json"
  new = json.loads(json.dumps(fingerprint))
  old = workdir_lib.read_json(path) if path.exists() else {}
  for part in ("greedy", "sampled"):
    a, b = old.get(part), new.get(part)
    if a is not None and b is not None and a != b:
      changed = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
      raise CommandError(f"{role_dir} holds samples of another evaluation ({changed}); use "
                         "another --output, or delete it")
  dist.barrier(f"eval/{role_dir.name}/resume_check")
  if dist.is_writer():
    workdir_lib.write_json(path, {part: new.get(part) or old.get(part)
                                  for part in ("greedy", "sampled")})


def _evaluate_role(plan: _Plan, role: str, out_dir, mesh, pool) -> dict:
  """Loads one model, evaluates it (resuming its shards) and drops it again."""
  from rest_jax.loop import evaluate_model
  from rest_jax.models import loading
  from rest_jax.models import params as params_lib
  from rest_jax.loop import splits as run_splits
  from rest_jax.runtime import sample_placement
  from rest_jax.sampling.sampler import Sampler
  from rest_jax.tasks import get_task

  spec = plan.models[role]
  loaded = loading.load_model(spec, mesh, seed=plan.settings.seed)
  try:
    task = get_task(plan.task, tokenizer=loaded.tokenizer)
  except ValueError as e:  # TaskDataError too
    raise CommandError(f"task {plan.task!r}: {_one_line(e)}") from e
  source = "train" if plan.split == "val" else plan.split
  if source not in task.splits:
    raise CommandError(f"task {plan.task!r} has no split {plan.split!r} (its splits: "
                       f"{', '.join(task.splits)})")
  problems = task.problems(source)
  if plan.split in ("train", "val") and plan.loop_config is not None:
    # The run's own prompts (loop/splits.py), as its "train" and "val" figures use them.
    try:
      train, val = run_splits.train_and_val(problems, plan.loop_config)
    except ValueError as e:
      raise CommandError(f"--split {plan.split}: {e}") from e
    problems = (run_splits.train_eval_problems(train, plan.loop_config, limit=plan.limit)
                if plan.split == "train" else val)
  problems = problems if plan.limit is None else problems[:plan.limit]
  if not problems:
    raise CommandError(f"task {plan.task!r}, split {plan.split!r}: no problems")
  role_dir = out_dir / role
  _check_resume(role_dir, _fingerprint(plan, spec, problems))
  # As the loop samples (LoopConfig.sample_placement).
  placement = sample_placement.resolve(plan.sample_placement, mesh, loaded.params,
                                       loaded.config.dtype)
  sample_mesh = sample_placement.sampling_mesh(mesh, placement)
  sampler = Sampler(loaded.graphdef, loaded.config, loaded.tokenizer, sample_mesh,
                    num_slots=plan.sampler_slots)
  # Into the sampler's serving layout once: every split's generate calls then reuse it.
  params = sampler.serving_params(sample_placement.to_sampling_mesh(
      loaded.params, mesh, sample_mesh, params_lib.shardings))
  result = evaluate_model.evaluate_split(
      problems, role_dir, plan.split, settings=plan.settings, sampler=sampler, params=params,
      tokenizer=loaded.tokenizer, pool=pool, desc=f"eval/{role}")
  return {"spec": spec, "source": loaded.source, "ids": [p.id for p in problems],
          "result": result}


def _evaluate(plan: _Plan, out_dir) -> dict:
  from rest_jax.loop import evaluation
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.verifiers import VerifierPool

  mesh = mesh_lib.create_mesh()
  pool = VerifierPool()
  try:
    done = {role: _evaluate_role(plan, role, out_dir, mesh, pool) for role in plan.models}
  finally:
    pool.close()
  s = plan.settings
  metrics = {"task": plan.task, "split": plan.split, "problems": len(done["model"]["ids"]),
             "settings": {"num_samples": s.num_samples, "ks": list(s.ks),
                          "sampling": dataclasses.asdict(s.sampling), "seed": s.seed,
                          "prompts_per_shard": s.prompts_per_shard}}
  for role, d in done.items():
    metrics[role] = {"spec": d["spec"], "source": d["source"], "metrics": d["result"].summary}
  if "baseline" in done:
    a, b = done["model"], done["baseline"]
    if a["ids"] != b["ids"]:
      raise CommandError("the model and the baseline got different problems: no pairing")
    per = [evaluation.per_prompt_metrics(d["result"].per_prompt, s.ks, d["result"].greedy)
           for d in (a, b)]
    shared = [k for k in per[0] if k in a["result"].summary and k in b["result"].summary]
    metrics["paired"] = evaluation.paired_differences({k: per[0][k] for k in shared}, per[1])
  return metrics


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

  from rest_jax.models.weights import WeightsError
  from rest_jax.runtime import distributed as dist
  from rest_jax.runtime import preemption
  from rest_jax.runtime import workdir as workdir_lib
  from rest_jax.tasks import TaskDataError

  temporary = None
  try:
    plan = _plan(args)
    if args.output is None:
      if dist.process_count() > 1:
        raise CommandError("--output is required with several processes (a directory every "
                           "process reads and writes, e.g. on gs://)")
      temporary = tempfile.mkdtemp(prefix="rest_jax_eval_")
    out_dir = epath.Path(args.output or temporary)
    metrics = _evaluate(plan, out_dir)
  except (CommandError, WeightsError, TaskDataError) as e:
    print(f"rest-jax eval: {_one_line(e)}", file=sys.stderr)
    return 2
  except preemption.Preempted as e:
    print(f"rest-jax eval: {e}", file=sys.stderr)
    return preemption.EXIT_CODE
  except dist.DistributedError as e:
    print(f"rest-jax eval: {e}", file=sys.stderr)
    return 1
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
