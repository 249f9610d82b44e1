"""ReST's Improve-step schedule: rising thresholds, the kept set, the loss weights.

Improve step s (1..I) of a Grow keeps the samples whose score is at least tau_s, with
tau_1 <= ... <= tau_I, so each step trains on a subset of the previous one (Gulcehre et al.
2023). A threshold is

* `absolute`: tau_s = thresholds[s-1], the same for every prompt;
* `quantile`: per prompt, the thresholds[s-1] quantile of that prompt's own scores. The paper
  found per-source percentiles better than one global threshold: a hard prompt keeps its best
  samples instead of none.

`min_score` adds a floor (quantile mode keeps a prompt's best samples even if all are bad).
Kept samples are (optionally) de-duplicated and capped at `max_per_prompt` per prompt, highest
score first.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

from rest_jax.loop.filtering import normalize_text

MODES = ("absolute", "quantile")
LOSSES = ("bc", "reward_weighted")


def check_schedule(thresholds: Sequence[float], mode: str, improve_steps: int) -> tuple:
  """Validates a threshold schedule; returns it as a tuple of floats."""
  if mode not in MODES:
    raise ValueError(f"ReSTConfig.threshold_mode={mode!r}: expected one of {MODES}")
  t = tuple(float(x) for x in thresholds)
  if len(t) != improve_steps:
    raise ValueError(f"ReSTConfig.thresholds has {len(t)} values for improve_steps="
                     f"{improve_steps}: give one threshold per Improve step")
  if any(b < a for a, b in zip(t, t[1:])):
    raise ValueError(f"ReSTConfig.thresholds={t}: thresholds must not decrease from one "
                     "Improve step to the next")
  if mode == "quantile" and any(not 0.0 <= x <= 1.0 for x in t):
    raise ValueError(f"ReSTConfig.thresholds={t}: quantile thresholds must lie in [0, 1]")
  return t


def prompt_thresholds(scores_by_prompt: Mapping[str, Sequence[float]], value: float, mode: str,
                      min_score: float | None = None) -> dict[str, float]:
  """The threshold each prompt's samples must reach at this step."""
  out = {}
  for pid, scores in scores_by_prompt.items():
    tau = float(np.quantile(np.asarray(scores, np.float64), value)) if mode == "quantile" \
        else float(value)
    out[pid] = tau if min_score is None else max(tau, float(min_score))
  return out


def select(rows: Sequence[Mapping], scores: Sequence[float], *, value: float, mode: str,
           min_score: float | None = None, max_per_prompt: int | None = None,
           dedupe: bool = True, pass_threshold: float = 1.0) -> tuple[list[dict], dict]:
  """Kept samples (each row plus its `score` and `threshold`) and counts.

  Counts include the verifier accuracy of the kept set (`kept_verifier_accuracy`, from each
  row's `reward`) beside its mean score: if a learned reward drifts from the verifier, the
  two part ways. Rows marked `human` (human solutions in the Grow dataset) compete for the
  same places but are counted apart (`human`, `kept_human`): the sample counts and the
  kept set's verifier accuracy are the policy's samples' alone.
  """
  if len(rows) != len(scores):
    raise ValueError(f"{len(rows)} samples but {len(scores)} scores")
  by_prompt: dict[str, list[int]] = collections.defaultdict(list)
  for i, r in enumerate(rows):
    by_prompt[str(r["prompt_id"])].append(i)
  taus = prompt_thresholds({p: [scores[i] for i in ids] for p, ids in by_prompt.items()},
                           value, mode, min_score)
  kept: list[dict] = []
  above = duplicates = capped = 0
  for pid in sorted(by_prompt):
    ids = sorted(by_prompt[pid], key=lambda i: (-float(scores[i]), int(rows[i]["sample_idx"])))
    seen: set[str] = set()
    n = 0
    for i in ids:
      if float(scores[i]) < taus[pid]:
        continue
      above += 1
      key = normalize_text(rows[i]["completion"])
      if dedupe and key in seen:
        duplicates += 1
        continue
      if max_per_prompt is not None and n >= max_per_prompt:
        capped += 1
        continue
      seen.add(key)
      n += 1
      kept.append({**rows[i], "score": float(scores[i]), "threshold": taus[pid]})
  own = [r for r in rows if not r.get("human")]
  own_kept = [k for k in kept if not k.get("human")]
  passed = [float(r["reward"]) >= pass_threshold for r in own]
  counts = {"samples": len(own), "prompts": len(by_prompt), "above_threshold": above,
            "duplicates": duplicates, "capped": capped, "kept": len(kept),
            "prompts_kept": len({k["prompt_id"] for k in kept}),
            "passed": int(sum(passed)),
            "prompts_solved": len({str(r["prompt_id"]) for r, p in zip(own, passed) if p}),
            "threshold_mean": float(np.mean(list(taus.values()))) if taus else None,
            "kept_mean_score": float(np.mean([k["score"] for k in kept])) if kept else None,
            "kept_verifier_accuracy": float(np.mean([float(k["reward"]) >= pass_threshold
                                                     for k in own_kept])) if own_kept else None}
  if len(own) < len(rows):
    counts["human"] = len(rows) - len(own)
    counts["kept_human"] = len(kept) - len(own_kept)
  return kept, counts


def example_weights(kept_scores: Sequence[float], loss: str,
                    all_scores: Sequence[float] | None = None) -> list[float]:
  """Per-example loss weights: 1 for behaviour cloning ('bc'); for 'reward_weighted', the
  score shifted to be >= 0 (minus the lowest score of the Grow) and scaled to mean 1 over the
  kept set, so the step size stays that of BC while better samples count more."""
  if loss not in LOSSES:
    raise ValueError(f"ReSTConfig.loss={loss!r}: expected one of {LOSSES}")
  if loss == "bc" or not len(kept_scores):
    return [1.0] * len(kept_scores)
  s = np.asarray(kept_scores, np.float64)
  lo = float(np.min(all_scores)) if all_scores is not None and len(all_scores) else float(s.min())
  w = s - lo
  if w.sum() <= 0:
    return [1.0] * len(kept_scores)
  # A small floor keeps the lowest kept sample in the loss at all.
  w = np.maximum(w, 1e-3 * w.max())
  return [float(x) for x in w / w.mean()]
