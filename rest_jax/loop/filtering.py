"""Filter: which verified samples an iteration trains on."""

from __future__ import annotations

import collections
import re
from typing import Iterable, Mapping

import gin

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
  """Duplicate key: whitespace runs collapsed and ends stripped (case kept: code cares)."""
  return _SPACE.sub(" ", text).strip()


@gin.configurable
def filter_samples(samples: Iterable[Mapping], *, max_per_prompt: int | None = 10,
                   threshold: float = 1.0, dedupe: bool = True) -> tuple[list[dict], dict]:
  """Keeps samples with reward >= threshold, de-duplicated, at most `max_per_prompt` each.

  Samples are taken in (prompt_id, sample_idx) order, so which ones are kept does not depend
  on the order shards were written in. Returns (kept, counts).
  """
  ordered = sorted(samples, key=lambda s: (str(s["prompt_id"]), int(s["sample_idx"])))
  kept: list[dict] = []
  per_prompt: dict[str, int] = collections.Counter()
  seen: set[tuple[str, str]] = set()
  passed = duplicates = capped = 0
  prompts = set()
  for s in ordered:
    pid = str(s["prompt_id"])
    prompts.add(pid)
    if float(s["reward"]) < threshold:
      continue
    passed += 1
    key = (pid, normalize_text(s["completion"]))
    if dedupe and key in seen:
      duplicates += 1
      continue
    if max_per_prompt is not None and per_prompt[pid] >= max_per_prompt:
      capped += 1
      continue
    seen.add(key)
    per_prompt[pid] += 1
    kept.append(dict(s))
  counts = {"samples": len(ordered), "prompts": len(prompts), "passed": passed,
            "duplicates": duplicates, "capped": capped, "kept": len(kept),
            "prompts_solved": len(per_prompt)}
  return kept, counts
