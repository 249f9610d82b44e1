"""How good a reward model is: ROC AUC of pass vs fail, and best-of-N by the reward model.

Best-of-N (an evaluation mode): for each held-out prompt, take its first k sampled
completions, let the reward model pick the one it scores highest, and count whether the real
verifier passes that one. It sits between pass@1 (pick at random) and pass@k (an oracle picks);
maj@k picks by vote instead.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
  """P(score of a random positive > score of a random negative), ties counting half
  (the Mann-Whitney statistic). None when either class is empty."""
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels, bool)
  pos, neg = int(y.sum()), int((~y).sum())
  if not pos or not neg:
    return None
  # Average ranks handle ties: rank sum of the positives minus its minimum.
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s), np.float64)
  sorted_s = s[order]
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def best_of_n(per_prompt: Mapping[str, Sequence[Mapping]], ks: Sequence[int]) -> dict:
  """`per_prompt[id]`: samples in sample order, each with `reward` (verifier, 1.0 = pass) and
  `score` (reward model). Returns {"rm_best_of_k": accuracy} for each k that every prompt has
  samples for (ties in score go to the earlier sample)."""
  out = {}
  if not per_prompt:
    return out
  n = min(len(v) for v in per_prompt.values())
  for k in ks:
    if k > n:
      continue
    hits = []
    for samples in per_prompt.values():
      first = list(samples)[:k]
      best = max(range(k), key=lambda i: (float(first[i]["score"]), -i))
      hits.append(float(first[best]["reward"]) >= 1.0)
    out[f"rm_best_of_{k}"] = float(np.mean(hits))
  return out
