"""How to sample: `SamplingParams` (and its gin entry point), the length buckets programs are
compiled for, and the check of `Sampler.generate`'s sample offsets."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin

from rest_jax.sampling import filters


def default_buckets(lo: int = 16, hi: int = 1 << 20) -> tuple[int, ...]:
  """16, 24, 32, 48, 64, 96, ...: powers of two and 1.5x powers of two."""
  out, b = [], lo
  while b <= hi:
    out += [b, b * 3 // 2]
    b *= 2
  return tuple(x for x in out if x <= hi)


DEFAULT_BUCKETS = default_buckets()


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to draw each token. EOS ids come from the tokenizer (`eos_id` and `stop_ids`)."""

  temperature: float = 1.0   # 0.0 = greedy
  top_k: int = 0             # 0 = off
  top_p: float = 1.0         # 1.0 = off
  max_new_tokens: int = 256
  stop: tuple[str, ...] = ()  # stop strings, matched on the detokenised completion

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if isinstance(self.stop, str):
      object.__setattr__(self, "stop", (self.stop,))
    if any(not s for s in self.stop):
      raise ValueError("stop strings must be non-empty")
    filters.FilterSpec.of(self.temperature, self.top_k, self.top_p, vocab_size=1 << 30)


@gin.configurable
def sampling_params(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    max_new_tokens: int = 256, stop: Sequence[str] = ()) -> SamplingParams:
  """The gin entry point for `SamplingParams`."""
  return SamplingParams(temperature, top_k, top_p, max_new_tokens, tuple(stop))


def check_offsets(offsets: Sequence[int], num_prompts: int, num_samples: int) -> list[int]:
  """`offsets` as ints, or a ValueError: one per prompt, each >= 0, and every sample index
  below 2**32 (the key folds it in as a uint32)."""
  out = [int(o) for o in offsets]
  if len(out) != num_prompts:
    raise ValueError(f"{len(out)} sample_offsets for {num_prompts} prompts: expected one per "
                     "prompt")
  bad = next((i for i, o in enumerate(out) if not 0 <= o <= (1 << 32) - num_samples), None)
  if bad is not None:
    raise ValueError(f"sample_offsets[{bad}]={out[bad]}: expected 0 <= offset <= "
                     f"2**32 - num_samples ({(1 << 32) - num_samples})")
  return out
