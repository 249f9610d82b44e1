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
  A prompt whose first k samples have no extracted answer counts as not correct for maj@k;
  maj@k is left out only when no sample of the split has an extracted answer at all.
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
    has_answers = any(s.get("extracted") is not None
                      for samples in per_prompt.values() for s in samples)
    for k in ks:
      if 1 < k <= n:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(len(c), sum(c), k) for c in correct.values()]))
        if has_answers:  # majority_correct: a prompt without an answer is not correct
          out[f"maj@{k}"] = float(np.mean([
              majority_correct([s.get("extracted") for s in samples[:k]], correct[pid][:k])
              for pid, samples in per_prompt.items()]))
    out["solved_prompts"] = int(sum(any(c) for c in correct.values()))
  if greedy:
    vals = [float(bool(greedy[pid])) for pid in per_prompt if pid in greedy]
    out["greedy_pass@1"] = float(np.mean(vals))
    out["greedy_pass@1_ci95"] = bootstrap_ci(vals)
  return out


# --- paired comparisons (`rest-jax eval --baseline`) ---------------------------------------

def _is_mean_metric(name: str) -> bool:
  """pass@k, maj@k, greedy_pass@1: the figures that are means over prompts."""
  kind, _, k = name.removeprefix("greedy_").partition("@")
  return kind in ("pass", "maj") and k.isdigit()


def per_prompt_metrics(per_prompt: Mapping[str, Sequence[Mapping]], ks: Sequence[int] = (1, 4, 8),
                       greedy: Mapping[str, bool] | None = None) -> dict[str, list[float]]:
  """`summarize`'s mean-over-prompts metrics (pass@1, pass@k, maj@k, greedy_pass@1), per prompt.

  Each prompt's values are `summarize` of that prompt alone, listed in `per_prompt`'s order,
  so their means are `summarize`'s figures. A prompt without any extracted answer has no maj@k
  of its own; where the split has maj@k, that prompt counts as not correct, as in `summarize`.
  """
  split = summarize(per_prompt, ks=ks, greedy=greedy)
  values: dict[str, list[float]] = {k: [] for k in sorted(split) if _is_mean_metric(k)}
  for pid, samples in per_prompt.items():
    one_greedy = None if greedy is None else {pid: greedy[pid]} if pid in greedy else {}
    one = summarize({pid: samples}, ks=ks, greedy=one_greedy)
    for k in list(values):
      if k in one:
        values[k].append(float(one[k]))
      elif k.startswith("maj@"):
        values[k].append(0.0)
      else:
        del values[k]
  return values


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, samples: int = 2000,
                        seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of mean(a) - mean(b) over paired prompts.

  `a[i]` and `b[i]` are two models' values on prompt i; every bootstrap draw resamples the
  prompts once, with the same indices for both, so what the prompts share cancels out.
  """
  x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"paired_bootstrap_ci: {x.size} values against {y.size}")
  if x.size == 0:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, x.size, (samples, x.size))
  diffs = x[idx].mean(axis=1) - y[idx].mean(axis=1)
  lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
  return float(lo), float(hi)


def paired_differences(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], *,
                       samples: int = 2000, seed: int = 0) -> dict[str, dict]:
  """Per metric in both `a` and `b` (`per_prompt_metrics` of two models on the same prompts):
  the difference of the means, its paired bootstrap 95% interval, and whether it excludes 0."""
  out = {}
  for name in a:
    if name in b:
      lo, hi = paired_bootstrap_ci(a[name], b[name], samples=samples, seed=seed)
      out[name] = {"difference": float(np.mean(a[name]) - np.mean(b[name])),
                   "ci95": (lo, hi), "excludes_zero": bool(lo > 0 or hi < 0)}
  return out
