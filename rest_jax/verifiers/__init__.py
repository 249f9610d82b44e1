"""Verifiers: binary rewards for ReST-EM, built to survive hostile completions.

  verify_math(completion, reference)   answer extraction + equivalence, under a hard deadline
  verify_code(completion, tests)       the program run against its tests in a bubblewrap sandbox
  VerifierPool(workers).map(items)     many items in parallel, verdicts in input order
  run_verify(path, out)                the `rest-jax verify` command's body

This package imports no jax: its worker processes start light.
"""

from __future__ import annotations

import atexit
import threading

from rest_jax.verifiers.code_harness import build_program, check_code, extract_code
from rest_jax.verifiers.math_answers import (ALL_FORMATS, answers_equal, check_math,
                                             extract_answer, normalize_answer, reference_answer)
from rest_jax.verifiers.pool import PoolStats, VerifierPool
from rest_jax.verifiers.sandbox import INSTALL_HELP, SandboxConfig, SandboxUnavailable
from rest_jax.verifiers.verdict import VERDICTS, Verdict
from rest_jax.verifiers.verify_cli import run_verify

__all__ = [
    "ALL_FORMATS", "INSTALL_HELP", "VERDICTS", "PoolStats", "SandboxConfig", "SandboxUnavailable",
    "Verdict", "VerifierPool", "answers_equal", "build_program", "check_code", "check_math",
    "extract_answer", "extract_code", "normalize_answer", "reference_answer", "run_verify",
    "verify_code", "verify_math",
]

_single_pools: dict[float, VerifierPool] = {}
_single_lock = threading.Lock()


def verify_math(completion: str, reference: str, *, formats: tuple[str, ...] = ALL_FORMATS,
                timeout_s: float = 3.0) -> Verdict:
  """Checks one math completion in a worker process that is killed if it overruns.

  For many items use a VerifierPool; this keeps one single-worker pool per timeout alive.
  """
  with _single_lock:
    pool = _single_pools.get(timeout_s)
    if pool is None:
      pool = _single_pools[timeout_s] = VerifierPool(1, math_timeout_s=timeout_s)
    item = {"completion": completion, "answer": reference, "formats": list(formats)}
    return pool.verify([item])[0]


def verify_code(completion: str, tests: dict, *, prompt: str | None = None,
                config: SandboxConfig | None = None) -> Verdict:
  """Runs one completion's program against its tests in the sandbox (see code_harness.py).

  The deadline is enforced here: the sandbox is killed at `config.deadline_s`.
  """
  return check_code(completion, tests, prompt=prompt, config=config)


@atexit.register
def _close_single_pools():
  for pool in _single_pools.values():
    pool.close()
