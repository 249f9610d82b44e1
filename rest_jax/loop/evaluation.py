"""Accuracy metrics over verified samples: pass@k (unbiased), maj@k, bootstrap intervals."""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021).

  1 - C(n - c, k) / C(n, k), computed as a product to stay exact for large n.
  """
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
  if k > n:
    raise ValueError(f"pass_at_k: k={k} exceeds the number of samples n={n}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
  """Whether the most frequent extracted answer is a correct one (ties: first seen wins)."""
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return False
  best = max(counts.values())
  for a, ok in zip(answers, correct):
    if a is not None and counts[a] == best:
      return bool(ok)
  return False


def bootstrap_ci(values: Sequence[float], *, samples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean over prompts."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, (samples, x.size))].mean(axis=1)
  lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
  return float(lo), float(hi)


def summarize(per_prompt: Mapping[str, Sequence[Mapping]], ks: Sequence[int] = (1, 4, 8),
              greedy: Mapping[str, bool] | None = None) -> dict:
  """Metrics of one split.

  `per_prompt[id]` lists that prompt's samples, each a mapping with `reward` (1.0 = correct)
  and optionally `extracted` (the answer, for maj@k). `greedy[id]` is the greedy verdict.
  """
  n_prompts = len(per_prompt)
  out: dict = {"prompts": n_prompts}
  if not n_prompts:
    return out
  correct = {pid: [float(s["reward"]) >= 1.0 for s in samples]
             for pid, samples in per_prompt.items()}
  n = min(len(c) for c in correct.values())
  out["samples_per_prompt"] = n
  if n:
    per = [sum(c) / len(c) for c in correct.values()]
    out["pass@1"] = float(np.mean(per))
    out["pass@1_ci95"] = bootstrap_ci(per)
    for k in ks:
      if 1 < k <= n:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(len(c), sum(c), k) for c in correct.values()]))
        votes = []
        for pid, samples in per_prompt.items():
          answers = [s.get("extracted") for s in samples[:k]]
          if all(a is None for a in answers):
            votes = None
            break
          votes.append(majority_correct(answers, correct[pid][:k]))
        if votes is not None:
          out[f"maj@{k}"] = float(np.mean(votes))
    out["solved_prompts"] = int(sum(any(c) for c in correct.values()))
  if greedy:
    vals = [float(bool(greedy[pid])) for pid in per_prompt if pid in greedy]
    out["greedy_pass@1"] = float(np.mean(vals))
    out["greedy_pass@1_ci95"] = bootstrap_ci(vals)
  return out
