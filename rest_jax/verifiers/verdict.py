"""The result of one verification: what every verifier returns."""

from __future__ import annotations

import dataclasses

VERDICTS = ("pass", "fail", "timeout", "error")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A binary verifier's decision about one completion.

  verdict: 'pass' (the completion is correct), 'fail' (it is not), 'timeout'
    (the check overran its deadline; counts as not correct), 'error' (the
    check itself could not run, e.g. a malformed reference or missing sandbox).
  extracted: the answer or program taken out of the completion, if any.
  reason: one line saying why, for logs and `rest-jax verify` output.
  """

  verdict: str
  extracted: str | None = None
  reason: str = ""

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

  @property
  def reward(self) -> float:
    # Only a pass earns reward: a timeout or an error must never teach the model.
    return 1.0 if self.verdict == "pass" else 0.0

  @property
  def passed(self) -> bool:
    return self.verdict == "pass"

  def to_json(self) -> dict:
    return {"verdict": self.verdict, "extracted": self.extracted, "reason": self.reason,
            "reward": self.reward}

  @classmethod
  def from_json(cls, obj: dict) -> "Verdict":
    return cls(obj["verdict"], obj.get("extracted"), obj.get("reason", ""))
