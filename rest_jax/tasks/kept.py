"""An iteration's kept samples (`kept.jsonl`) and the (prompt, completion) pairs SFT trains on.

A `kept.jsonl` line, as the loop writes it::

  {"prompt_id": "gsm8k-test-0012", "prompt": "...", "completion": "...", "reward": 1.0,
   "sample_idx": 3}

Optional: "tokens" (the completion's token ids as sampled, a list of ints); any other key
is kept in `KeptSample.extra`. Every line is checked, and every bad line is reported with
its line number; nothing is skipped silently. Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from etils import epath

from rest_jax.tasks import jsonl_parse

_REQUIRED = ("prompt_id", "prompt", "completion", "reward", "sample_idx")


class KeptDataError(ValueError):
  """A kept-samples file has malformed lines (the message lists them by line number)."""


@dataclasses.dataclass(frozen=True)
class KeptSample:
  prompt_id: str
  prompt: str
  completion: str
  reward: float
  sample_idx: int
  tokens: tuple[int, ...] | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SFTExample:
  """One fine-tuning example: the loss covers `completion` (and the EOS after it) only.

  `weight` multiplies the example's loss weights (1 for ReST-EM; the reward for a
  reward-weighted loss). `completion_ids`, when set, are used instead of encoding
  `completion` (the exact tokens the sampler produced).
  """

  prompt: str
  completion: str
  weight: float = 1.0
  source_id: str = ""
  completion_ids: tuple[int, ...] | None = None


def _check_line(obj: Any) -> str | None:
  """What is wrong with one parsed line, or None."""
  if not isinstance(obj, dict):
    return f"expected a JSON object, got {type(obj).__name__}"
  missing = [k for k in _REQUIRED if k not in obj]
  if missing:
    return f"missing key(s) {missing}; expected keys {list(_REQUIRED)}"
  if not isinstance(obj["prompt_id"], (str, int)) or isinstance(obj["prompt_id"], bool):
    return f"'prompt_id' must be a string, got {obj['prompt_id']!r}"
  for k in ("prompt", "completion"):
    if not isinstance(obj[k], str):
      return f"{k!r} must be a string, got {type(obj[k]).__name__}"
  r = obj["reward"]
  if isinstance(r, bool) or not isinstance(r, (int, float)):
    return f"'reward' must be a number, got {r!r}"
  s = obj["sample_idx"]
  if isinstance(s, bool) or not isinstance(s, int) or s < 0:
    return f"'sample_idx' must be a non-negative integer, got {s!r}"
  t = obj.get("tokens")
  if t is not None and (not isinstance(t, list) or
                        not all(isinstance(x, int) and not isinstance(x, bool) for x in t)):
    return "'tokens' must be a list of integer token ids"
  return None


def parse_kept_lines(lines: Iterable[str], source: str = "<lines>") -> list[KeptSample]:
  """Parses kept-sample JSON lines; raises `KeptDataError` listing every bad line."""
  out, errors = [], []
  for lineno, obj in jsonl_parse.json_objects(lines, source, errors):
    problem = _check_line(obj)
    if problem:
      errors.append(f"{source}:{lineno}: {problem}")
      continue
    extra = {k: v for k, v in obj.items() if k not in _REQUIRED and k != "tokens"}
    tokens = tuple(obj["tokens"]) if obj.get("tokens") is not None else None
    out.append(KeptSample(prompt_id=str(obj["prompt_id"]), prompt=obj["prompt"],
                          completion=obj["completion"], reward=float(obj["reward"]),
                          sample_idx=obj["sample_idx"], tokens=tokens, extra=extra))
  jsonl_parse.raise_if_errors(errors, KeptDataError, "kept-sample line(s)")
  return out


def read_kept(path) -> list[KeptSample]:
  """Reads an iteration's `kept.jsonl` (local or gs://)."""
  path = epath.Path(path)
  with path.open("r") as f:
    return parse_kept_lines(f, source=str(path))


def sft_examples_from_kept(samples: Sequence[KeptSample], *, weighting: str = "uniform",
                           use_sample_tokens: bool = False) -> list[SFTExample]:
  """Turns kept samples into SFT examples.

  Args:
    samples: the kept samples, in file order.
    weighting: "uniform" (every example weight 1: ReST-EM) or "reward" (weight = reward).
    use_sample_tokens: train on the sampled token ids ("tokens") instead of re-encoding the
      completion text; every sample must then carry "tokens".
  """
  if weighting not in ("uniform", "reward"):
    raise ValueError(f"weighting must be 'uniform' or 'reward', got {weighting!r}")
  out = []
  for s in samples:
    if use_sample_tokens and s.tokens is None:
      raise KeptDataError(f"kept sample {s.prompt_id!r}#{s.sample_idx} has no 'tokens' but "
                          "use_sample_tokens=True")
    out.append(SFTExample(prompt=s.prompt, completion=s.completion,
                          weight=s.reward if weighting == "reward" else 1.0,
                          source_id=f"{s.prompt_id}#{s.sample_idx}",
                          completion_ids=s.tokens if use_sample_tokens else None))
  return out
