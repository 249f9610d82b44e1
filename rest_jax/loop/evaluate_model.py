"""One model on one split: sampled and greedy completions, verified, summarised.

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
