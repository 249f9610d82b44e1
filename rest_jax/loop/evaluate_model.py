"""One model on one split: sampled and greedy completions, verified, summarised; and the
models of a `rest-jax eval` (`evaluate_models`: each model's split, resumable under its
output directory, and the paired comparison with a baseline).

The loop's Evaluate step (`rest_em.Loop._evaluate`, for the held-out and the train split of
every stage) and `rest-jax eval` both call `evaluate_split`, so a checkpoint evaluated by the
command gives exactly the figures its run recorded: the same problems, the same seed
(`eval_seed`), the same per-problem keys and shard layout (`generate.run_shards`, which also
splits the shards between processes), the same metrics (`evaluation.summarize`).

Under `stage_dir` a split named NAME leaves `eval_NAME/shard-*.jsonl` (the sampled
completions) and `eval_NAME_greedy/shard-*.jsonl` (one greedy completion per problem); a
shard file that exists is not sampled again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable, Sequence

from rest_jax.loop import evaluation
from rest_jax.loop import generate
from rest_jax.sampling.sampler import SamplingParams


def eval_seed(seed: int) -> int:
  """The sampling seed of every evaluation of a run with `LoopConfig.seed = seed`.

  The same for every stage (and every model), so stages are compared on the same draws.
  """
  return seed * 1_000_003 + 999_983


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How a split is evaluated.

  num_samples: sampled completions per problem (`LoopConfig.eval_samples`); 0: greedy only.
  ks: the k of pass@k and maj@k (`LoopConfig.eval_ks`).
  sampling: how the sampled completions draw; the greedy one uses the same with temperature 0.
  prompts_per_shard: problems per shard file.
  seed: the run's seed (`LoopConfig.seed`); the draws use `eval_seed(seed)`.
  """

  num_samples: int
  ks: tuple[int, ...]
  sampling: SamplingParams
  prompts_per_shard: int
  seed: int

  @classmethod
  def from_loop_config(cls, cfg) -> "EvalSettings":
    """The settings of the loop's Evaluate step under `cfg` (a `LoopConfig`)."""
    return cls(num_samples=cfg.eval_samples, ks=tuple(cfg.eval_ks),
               sampling=SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k,
                                       top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                       stop=tuple(cfg.stop)),
               prompts_per_shard=cfg.prompts_per_shard, seed=cfg.seed)

  @property
  def greedy_sampling(self) -> SamplingParams:
    return dataclasses.replace(self.sampling, temperature=0.0)


@dataclasses.dataclass
class SplitEval:
  """What `evaluate_split` found: the metrics and the verified rows behind them.

  per_prompt[id]: that problem's sampled rows in sample order (empty when greedy only);
  greedy[id]: whether its greedy completion passed; summary: `evaluation.summarize`'s dict.
  """

  per_prompt: dict[str, list[dict]]
  greedy: dict[str, bool]
  summary: dict


def evaluate_split(problems: Sequence, stage_dir, name: str, *, settings: EvalSettings,
                   sampler, params, tokenizer, pool, desc: str,
                   record: Callable[[str], Callable[[list[int]], None]] | None = None
                   ) -> SplitEval:
  """Samples, verifies and summarises `problems` (see the module docstring).

  `params` are on the sampler's mesh (each process's own copy with several processes);
  `desc` prefixes the progress bar and barrier names; `record(subdir)` (optional) gives the
  callback `run_shards` reports finished shards of `stage_dir/subdir` to.
  """
  seed = eval_seed(settings.seed)

  def sample(subdir: str, num_samples: int, sampling: SamplingParams) -> list[dict]:
    rows, _ = generate.run_shards(
        problems, stage_dir / subdir, prompts_per_shard=settings.prompts_per_shard,
        desc=f"{desc}/{subdir}", record=record(subdir) if record is not None else None,
        sampler=sampler, params=params, tokenizer=tokenizer, pool=pool,
        num_samples=num_samples, sampling=sampling, seed=seed)
    return rows

  sampled = (sample(f"eval_{name}", settings.num_samples, settings.sampling)
             if settings.num_samples else [])
  greedy_rows = sample(f"eval_{name}_greedy", 1, settings.greedy_sampling)
  per_prompt: dict[str, list[dict]] = {p.id: [] for p in problems}
  for r in sampled:
    per_prompt[r["prompt_id"]].append(r)
  greedy = {r["prompt_id"]: r["reward"] >= 1.0 for r in greedy_rows}
  summary = evaluation.summarize(per_prompt, ks=settings.ks, greedy=greedy)
  return SplitEval(per_prompt=per_prompt, greedy=greedy, summary=summary)


# ----------------------------------------------------------------------------- `rest-jax eval`

class EvaluationError(ValueError):
  """What an evaluation cannot use (a task without the split, samples of another evaluation
  under its output, ...); one line on stderr and exit status 2 from the command line."""


def one_line(e: Exception) -> str:
  """The message of `e` on one line, without the "In call to configurable" lines gin adds."""
  lines = [line.strip() for line in str(e).splitlines()]
  return "; ".join(line for line in lines
                   if line and not line.startswith("In call to configurable"))


@dataclasses.dataclass
class EvalPlan:
  """One `rest-jax eval`: models by role ('model', 'baseline'), the task, split and settings."""

  models: dict[str, str]   # role ("model", "baseline") -> spec
  task: str
  split: str
  limit: int | None
  settings: EvalSettings
  sampler_slots: int
  sample_placement: str = "auto"
  loop_config: object = None  # the LoopConfig: which training prompts 'train' and 'val' are


def fingerprint(plan: EvalPlan, spec: str, problems) -> dict:
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


def check_resume(role_dir, wanted: dict) -> None:
  """Refuses a directory holding samples of another evaluation; records this one.

  A greedy-only evaluation and a full one of the same model share the greedy shards.
  """
  from rest_jax.runtime import distributed as dist
  from rest_jax.runtime import workdir as workdir_lib
  path = role_dir / "eval.json"
  new = json.loads(json.dumps(wanted))
  old = workdir_lib.read_json(path) if path.exists() else {}
  for part in ("greedy", "sampled"):
    a, b = old.get(part), new.get(part)
    if a is not None and b is not None and a != b:
      changed = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
      raise EvaluationError(f"{role_dir} holds samples of another evaluation ({changed}); "
                            "use another --output, or delete it")
  dist.barrier(f"eval/{role_dir.name}/resume_check")
  if dist.is_writer():
    workdir_lib.write_json(path, {part: new.get(part) or old.get(part)
                                  for part in ("greedy", "sampled")})


def evaluate_role(plan: EvalPlan, role: str, out_dir, mesh, pool) -> dict:
  """Loads one model, evaluates it (resuming its shards) and drops it again."""
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
    raise EvaluationError(f"task {plan.task!r}: {one_line(e)}") from e
  source = "train" if plan.split == "val" else plan.split
  if source not in task.splits:
    raise EvaluationError(f"task {plan.task!r} has no split {plan.split!r} (its splits: "
                          f"{', '.join(task.splits)})")
  problems = task.problems(source)
  if plan.split in ("train", "val") and plan.loop_config is not None:
    # The run's own prompts (loop/splits.py), as its "train" and "val" figures use them.
    try:
      train, val = run_splits.train_and_val(problems, plan.loop_config)
    except ValueError as e:
      raise EvaluationError(f"--split {plan.split}: {e}") from e
    problems = (run_splits.train_eval_problems(train, plan.loop_config, limit=plan.limit)
                if plan.split == "train" else val)
  problems = problems if plan.limit is None else problems[:plan.limit]
  if not problems:
    raise EvaluationError(f"task {plan.task!r}, split {plan.split!r}: no problems")
  role_dir = out_dir / role
  check_resume(role_dir, fingerprint(plan, spec, problems))
  # As the loop samples (LoopConfig.sample_placement).
  placement = sample_placement.resolve(plan.sample_placement, mesh, loaded.params,
                                       loaded.config.dtype)
  sample_mesh = sample_placement.sampling_mesh(mesh, placement)
  sampler = Sampler(loaded.graphdef, loaded.config, loaded.tokenizer, sample_mesh,
                    num_slots=plan.sampler_slots)
  # Into the sampler's serving layout once: every split's generate calls then reuse it.
  params = sampler.serving_params(sample_placement.to_sampling_mesh(
      loaded.params, mesh, sample_mesh, params_lib.shardings))
  result = evaluate_split(
      problems, role_dir, plan.split, settings=plan.settings, sampler=sampler, params=params,
      tokenizer=loaded.tokenizer, pool=pool, desc=f"eval/{role}")
  return {"spec": spec, "source": loaded.source, "ids": [p.id for p in problems],
          "result": result}


def evaluate_models(plan: EvalPlan, out_dir) -> dict:
  """Every model of `plan` on its problems, with the paired comparison when there is a
  baseline: the metrics `rest-jax eval` prints and writes."""
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.verifiers import VerifierPool

  mesh = mesh_lib.create_mesh()
  pool = VerifierPool()
  try:
    done = {role: evaluate_role(plan, role, out_dir, mesh, pool) for role in plan.models}
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
      raise EvaluationError("the model and the baseline got different problems: no pairing")
    per = [evaluation.per_prompt_metrics(d["result"].per_prompt, s.ks, d["result"].greedy)
           for d in (a, b)]
    shared = [k for k in per[0] if k in a["result"].summary and k in b["result"].summary]
    metrics["paired"] = evaluation.paired_differences({k: per[0][k] for k in shared}, per[1])
  return metrics
