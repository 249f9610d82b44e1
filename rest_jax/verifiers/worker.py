"""One verifier worker process: reads items, writes verdicts, one JSON line each.

Started by `pool.py` as a fresh interpreter (never forked from the caller, which may hold
jax threads). It imports only this package, math-verify and the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from rest_jax.verifiers.code_harness import check_code, close_spare
from rest_jax.verifiers.math_answers import ALL_FORMATS, check_math
from rest_jax.verifiers.sandbox import SandboxConfig, SandboxUnavailable
from rest_jax.verifiers.verdict import Verdict


@dataclasses.dataclass(frozen=True)
class CheckOptions:
  """How items are checked; the same in every worker of a pool."""

  math_timeout_s: float = 3.0
  formats: tuple[str, ...] = ALL_FORMATS
  sandbox: SandboxConfig = SandboxConfig()

  def to_json(self) -> dict:
    return {"math_timeout_s": self.math_timeout_s, "formats": list(self.formats),
            "sandbox": dataclasses.asdict(self.sandbox)}

  @classmethod
  def from_json(cls, obj: dict) -> "CheckOptions":
    sandbox = obj["sandbox"]
    sandbox["extra_ro_binds"] = tuple(sandbox["extra_ro_binds"])
    return cls(obj["math_timeout_s"], tuple(obj["formats"]), SandboxConfig(**sandbox))


def verify_item(item, options: CheckOptions, prestart: bool = False) -> Verdict:
  """One item: {"completion", "answer"[, "formats", "check_work"]} for math,
  {"completion", "tests"[, "prompt"]} for code."""
  if not isinstance(item, dict) or "completion" not in item:
    return Verdict("error", None, 'an item needs "completion" and either "answer" or "tests"')
  if "answer" in item:
    formats = tuple(item.get("formats") or options.formats)
    return check_math(item["completion"], item["answer"], formats=formats,
                      timeout_s=options.math_timeout_s, check_work=bool(item.get("check_work")))
  if "tests" in item:
    return check_code(item["completion"], item["tests"], prompt=item.get("prompt"),
                      config=options.sandbox, prestart=prestart)
  return Verdict("error", None, f'an item needs "answer" or "tests", got keys {sorted(item)}')


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _warm_up():
  # Pay for sympy and the LaTeX grammar before the first item's deadline starts.
  from rest_jax.verifiers.math_answers import answers_equal
  answers_equal("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}")


def main():
  # Replies go out on a private copy of stdout; anything else printing lands on stderr.
  out = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  first = sys.stdin.readline()
  if not first:  # the pool closed before sending anything
    return
  options = CheckOptions.from_json(json.loads(first))
  _warm_up()
  out.write('{"ready": true}\n')
  for line in sys.stdin:
    request = json.loads(line)
    try:
      verdict = verify_item(request["item"], options, prestart=True)
    except SandboxUnavailable as e:  # the pool raises it to its caller
      out.write(json.dumps({"i": request["i"], "fatal": str(e)}) + "\n")
      continue
    except Exception as e:  # noqa: BLE001 - a verifier bug must cost one item, not the run
      verdict = Verdict("error", None, f"verifier raised {type(e).__name__}: {e}")
    out.write(json.dumps({"i": request["i"], "rss_mb": _rss_mb(), **verdict.to_json()}) + "\n")
  close_spare()  # stdin closed: the pool is shutting down
