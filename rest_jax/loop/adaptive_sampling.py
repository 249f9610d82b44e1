"""An adaptive sampling budget for Generate: no more samples for prompts already solved.

ReST-EM draws K = `LoopConfig.num_samples` samples of every training prompt, but the filter
keeps at most `max_per_prompt` distinct verified samples of each, so whatever a prompt draws
after it has that many is thrown away. With `LoopConfig.adaptive_rounds = R` Generate runs in
R rounds instead:

* round 0 gives every prompt n0 = max(1, K // R) samples;
* their mean length sets the budget B = N * K * (mean new tokens per completion): about what
  the fixed K would spend, so the two arms of an A/B generate about the same tokens;
* a prompt is *done* once the filter keeps `max_per_prompt` of its samples (more could only be
  capped); each later round gives every prompt neither done nor at the cap
  (`adaptive_max_samples`) the same number of further samples: its share of the budget left,
  spread over the rounds left (the last round takes all of it), but at least one while the
  budget left buys one (else R > K would stop after round 0). Sampling stops when a round
  would get no sample or no prompt is active;
* a last top-up round (round R, or the first round whose share is under one sample each)
  gives one more sample to as many active prompts, in order, as the budget still buys: whole
  samples per prompt would otherwise leave up to one sample per active prompt unspent.

Every plan is made from rows read back from disk (`generate.run_shards` returns all of them,
after a barrier), so a resumed run and every process make the same plan. Round r writes its
shards to `STAGE/samples/round_{r:02d}/`. Prompts only leave, so every active prompt has had
the same number of samples, which is the index its next sample starts at: sample j of a prompt
is the same completion in both arms.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Iterable, Mapping, Sequence

from rest_jax.loop import filtering
from rest_jax.loop import generate

log = logging.getLogger(__name__)

# Default per-prompt cap, in multiples of the fixed arm's K.
_DEFAULT_CAP = 4


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the rounds are planned.

  Attributes:
    num_samples: the fixed arm's K per prompt (it sets the token budget).
    rounds: R >= 1, the most rounds Generate runs.
    max_samples: the most samples one prompt gets over all rounds.
    max_per_prompt: the filter's cap; a prompt with this many kept samples is done (None:
      never done).
  """

  num_samples: int
  rounds: int
  max_samples: int
  max_per_prompt: int | None

  def __post_init__(self):
    if self.num_samples < 1:
      raise ValueError(f"LoopConfig.num_samples={self.num_samples}: expected >= 1")
    if self.rounds < 1:
      raise ValueError(f"LoopConfig.adaptive_rounds={self.rounds}: expected >= 1 here "
                       "(0 turns adaptive sampling off)")
    if self.max_samples < self.first_samples:
      raise ValueError(
          f"LoopConfig.adaptive_max_samples={self.max_samples}: expected >= "
          f"max(1, num_samples // adaptive_rounds) = {self.first_samples}, the samples round 0 "
          "gives every prompt")

  @property
  def first_samples(self) -> int:
    """n0: what round 0 gives every prompt."""
    return max(1, self.num_samples // self.rounds)

  @classmethod
  def of(cls, cfg) -> "Settings | None":
    """The settings of a `LoopConfig` (None: adaptive sampling off); a ValueError naming the
    field when `adaptive_rounds` or `adaptive_max_samples` is out of range."""
    rounds, cap = cfg.adaptive_rounds, cfg.adaptive_max_samples
    if rounds < 0:
      raise ValueError(f"LoopConfig.adaptive_rounds={rounds}: expected >= 0 (0: off, the "
                       "fixed num_samples per prompt)")
    least = max(1, cfg.num_samples // max(rounds, 1))
    if cap is not None and cap < least:
      raise ValueError(f"LoopConfig.adaptive_max_samples={cap}: expected None or >= "
                       f"max(1, num_samples // max(adaptive_rounds, 1)) = {least}")
    if not rounds:
      return None
    return cls(num_samples=cfg.num_samples, rounds=rounds,
               max_samples=_DEFAULT_CAP * cfg.num_samples if cap is None else cap,
               max_per_prompt=cfg.max_per_prompt)


@dataclasses.dataclass(frozen=True)
class Plan:
  """One round: `samples` more samples of each prompt in `active`, from index `offset`;
  `last`: the top-up, after which no round follows."""

  active: tuple[str, ...]
  samples: int
  offset: int
  last: bool = False


def token_budget(num_prompts: int, num_samples: int, first_rows: Sequence[Mapping]) -> int:
  """B = N * K * (mean new tokens of round 0's completions), rounded down; 0 without rows."""
  if not first_rows:
    return 0
  tokens = sum(len(r["tokens"]) for r in first_rows)
  return num_prompts * num_samples * tokens // len(first_rows)


def done_prompts(rows: Iterable[Mapping], max_per_prompt: int | None) -> set[str]:
  """Prompts the filter already keeps `max_per_prompt` samples of.

  The very filter the iteration keeps by (`filtering.filter_samples`, gin bindings included):
  it takes samples in index order, so later samples of these prompts could only be capped.
  """
  if max_per_prompt is None:
    return set()
  kept, _ = filtering.filter_samples(rows, max_per_prompt=max_per_prompt)
  per_prompt = collections.Counter(str(k["prompt_id"]) for k in kept)
  return {p for p, n in per_prompt.items() if n >= max_per_prompt}


def plan_round(rows: Sequence[Mapping], prompt_ids: Sequence[str], settings: Settings, r: int,
               budget: int) -> Plan:
  """Round r's plan from the rows of rounds 0..r-1 (round 0: n0 samples of every prompt).

  Later rounds give each active prompt (not done, below the cap)
  n = min(cap - used, max(floor(m / (R - r)), min(1, m))) samples, where
  m = floor(left / (active * mean_len)) is what the budget not yet spent buys each, and
  `mean_len` the mean new tokens of the active prompts' samples so far (at least 1: an empty
  completion still took a decode step). Round R (the top-up) gives one sample to each of the
  first floor(left / mean_len) active prompts, and so does an earlier round whose m is 0; no
  round follows a top-up. Integer arithmetic: the same plan on every host. A plan of 0 samples
  or no active prompt ends the sampling.
  """
  if r == 0:
    return Plan(tuple(prompt_ids), settings.first_samples, 0)
  count: collections.Counter = collections.Counter()
  tokens: collections.Counter = collections.Counter()
  for row in rows:
    count[str(row["prompt_id"])] += 1
    tokens[str(row["prompt_id"])] += len(row["tokens"])
  done = done_prompts(rows, settings.max_per_prompt)
  active = [p for p in prompt_ids if p not in done and count[p] < settings.max_samples]
  if not active:
    return Plan((), 0, 0)
  used = sorted({count[p] for p in active})
  if len(used) != 1 or used[0] < 1:
    raise ValueError(f"round {r}: the active prompts have {used} samples so far; every one "
                     "should have the same number >= 1 (the round directories do not come from "
                     "one run: delete STAGE/samples to sample again)")
  used = used[0]
  left = max(0, budget - sum(tokens.values()))
  samples = used * len(active)
  active_tokens = max(sum(tokens[p] for p in active), samples)
  affordable = left * samples // (len(active) * active_tokens)
  if r == settings.rounds or not affordable:
    # The top-up: one more sample for each of the first active prompts the budget still buys.
    return Plan(tuple(active[:left * samples // active_tokens]), 1, used, last=True)
  n = max(affordable // (settings.rounds - r), min(1, affordable))
  return Plan(tuple(active), min(settings.max_samples - used, n), used)


# The stats `generate.run_shards` returns that add up over rounds.
_SUMS = ("sample_s", "verify_s", "completions", "new_tokens")


def sample_in_rounds(prompt_ids: Sequence[str], settings: Settings,
                     sample: Callable[[int, Plan], tuple[list[dict], dict]]
                     ) -> tuple[list[dict], dict]:
  """Runs the rounds: `sample(r, plan)` draws round r and returns its rows and stats (those of
  `generate.run_shards`). Returns every round's rows and the stats summed over rounds, with
  `rounds` (how many ran), `budget_tokens`, `max_samples_per_prompt` and `prompts_done`."""
  rows: list[dict] = []
  stats = dict.fromkeys(_SUMS, 0)
  own_tokens = own_verdicts = 0.0   # what this process sampled and verified (for its rates)
  budget = ran = 0
  for r in range(settings.rounds + 1):  # + the top-up round
    plan = plan_round(rows, prompt_ids, settings, r, budget)
    spent = sum(len(row["tokens"]) for row in rows)
    if not plan.samples or not plan.active:
      log.info("adaptive sampling: stops before round %d of %d: %d prompts active, tokens used "
               "%d / budget %d", r, settings.rounds, len(plan.active), spent, budget)
      break
    log.info("adaptive sampling round %d of %d: %d active prompts, %d samples each (from index "
             "%d), tokens used %d / budget %s", r, settings.rounds, len(plan.active),
             plan.samples, plan.offset, spent, budget if r else "(set by this round)")
    new, s = sample(r, plan)
    rows.extend(new)
    ran += 1
    for k in _SUMS:
      stats[k] += s[k]
    own_tokens += s["tokens_per_s"] * s["sample_s"]
    own_verdicts += s["verdicts_per_s"] * s["verify_s"]
    if r == 0:
      budget = token_budget(len(prompt_ids), settings.num_samples, new)
    if plan.last:
      break
  count = collections.Counter(str(row["prompt_id"]) for row in rows)
  stats.update({
      "tokens_per_s": own_tokens / max(stats["sample_s"], 1e-9),
      "verdicts_per_s": own_verdicts / max(stats["verify_s"], 1e-9),
      "rounds": ran, "budget_tokens": budget,
      "max_samples_per_prompt": max(count.values(), default=0),
      "prompts_done": len(done_prompts(rows, settings.max_per_prompt))})
  return rows, stats


def run_rounds(problems: Sequence, stage_dir, settings: Settings, *, prompts_per_shard: int,
               desc: str, record: Callable[[str], Callable[[list[int]], None]] | None = None,
               **kwargs) -> tuple[list[dict], dict]:
  """Generate + Verify of `problems` in rounds (see the module docstring).

  Round r is a `generate.run_shards` call into `stage_dir/samples/round_{r:02d}`, reporting its
  finished shards to `record("samples/round_{r:02d}")`; `kwargs` (sampler, params, tokenizer,
  pool, sampling, seed) go to every call. Returns `sample_in_rounds`' rows and stats.
  """
  by_id = {p.id: p for p in problems}

  def sample(r: int, plan: Plan) -> tuple[list[dict], dict]:
    sub = f"samples/round_{r:02d}"
    return generate.run_shards(
        [by_id[i] for i in plan.active], stage_dir / sub, prompts_per_shard=prompts_per_shard,
        desc=f"{desc}/{sub}", record=record(sub) if record else None, num_samples=plan.samples,
        sample_offsets=dict.fromkeys(plan.active, plan.offset), **kwargs)

  return sample_in_rounds([p.id for p in problems], settings, sample)
