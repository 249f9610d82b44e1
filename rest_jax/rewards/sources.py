"""Reward sources for ReST's Grow step (`ReSTConfig.reward` in gin):

* `'verifier'`: the task's verifier reward (0/1), already on every sample row;
* `'reward_model'`: a learned reward model (`reward_model.RewardScorer`);
* `'package.module:function'`: a graded score, a user's Python callable called once per
  sample as `function(problem, completion: str) -> float`; `problem` is the task's
  `tasks.base.Problem` the sample answers (its prompt, reference answer or hidden tests,
  human solution, meta). Built in: `rest_jax.rewards.graded:fraction_of_tests_passed` (code
  tasks: the share of a program's hidden tests it passes).

Every source maps a list of sample rows to a list of floats, in order.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Mapping, Sequence


class RewardSourceError(ValueError):
  """A reward source is misconfigured or returned something that is not a finite number."""


class VerifierReward:
  name = "verifier"

  def score(self, rows: Sequence[Mapping]) -> list[float]:
    return [float(r["reward"]) for r in rows]


class ModelReward:
  name = "reward_model"

  def __init__(self, scorer):
    self.scorer = scorer

  def score(self, rows: Sequence[Mapping], desc: str | None = "reward model") -> list[float]:
    out = self.scorer.score([r["prompt"] for r in rows], [r["completion"] for r in rows], desc)
    return [float(x) for x in out]


class CallableReward:
  """`function(problem, completion) -> float` over the rows; `problems` maps a row's
  prompt_id to its Problem."""

  def __init__(self, spec: str, problems: Mapping[str, object]):
    self.name = spec
    self.fn = resolve_callable(spec)
    self.problems = problems

  def score(self, rows: Sequence[Mapping], desc: str | None = None) -> list[float]:
    from tqdm import tqdm
    out = []
    for r in tqdm(rows, desc=desc or self.name, unit="sample", disable=desc is False,
                  mininterval=2.0):
      pid = str(r["prompt_id"])
      if pid not in self.problems:
        raise RewardSourceError(f"reward {self.name!r}: sample {pid!r}#{r.get('sample_idx')} "
                                "answers no problem of the task's training split")
      try:
        v = self.fn(self.problems[pid], r["completion"])
      except Exception as e:  # the user's code: name it and the sample, keep the cause
        raise RewardSourceError(f"reward {self.name!r} raised {type(e).__name__}: {e} on sample "
                                f"{pid!r}#{r.get('sample_idx')}") from e
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RewardSourceError(
            f"reward callable {self.name!r} returned {v!r} for sample "
            f"{pid!r}#{r.get('sample_idx')}: expected a finite number")
      out.append(float(v))
    return out


def resolve_callable(spec: str) -> Callable:
  """`'package.module:function'` -> the function (a clear error if it is not there)."""
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise RewardSourceError(f"reward {spec!r}: expected 'verifier', 'reward_model' or "
                            "'package.module:function'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise RewardSourceError(f"reward {spec!r}: cannot import module {module_name!r}: {e}") from e
  fn = module
  for part in attr.split("."):
    if not hasattr(fn, part):
      raise RewardSourceError(f"reward {spec!r}: module {module_name!r} has no {attr!r}")
    fn = getattr(fn, part)
  if not callable(fn):
    raise RewardSourceError(f"reward {spec!r}: {attr!r} is not callable")
  return fn


def needs_reward_model(spec: str) -> bool:
  return spec == "reward_model"


def make_reward_source(spec: str, *, scorer=None, problems: Mapping[str, object] | None = None):
  """The source `spec` names; `scorer` (a RewardScorer) is required for 'reward_model',
  `problems` (prompt_id -> Problem) for a callable."""
  if spec == "verifier":
    return VerifierReward()
  if spec == "reward_model":
    if scorer is None:
      raise RewardSourceError("reward 'reward_model' needs a trained reward model")
    return ModelReward(scorer)
  source = CallableReward(spec, problems or {})
  if problems is None:
    raise RewardSourceError(f"reward {spec!r}: a callable needs the task's problems")
  return source
