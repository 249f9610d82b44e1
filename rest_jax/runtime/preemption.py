"""Stopping at a safe point on SIGTERM, which a TPU VM receives shortly before preemption.

`install()` replaces the default SIGTERM action (die at once) with a flag. The loop calls
`check(where)` at safe points (after each generated shard, after each train step); once any
process of the job has the flag, every process raises `Preempted` at the same point, with
finished shards and a train checkpoint on disk, and rerunning the same command resumes.
All processes must call `check` at the same points, in the same order.
"""

from __future__ import annotations

import logging
import signal
import threading

from rest_jax.runtime import distributed as dist

log = logging.getLogger(__name__)

EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by it

_requested = threading.Event()


class Preempted(Exception):
  """Raised at a safe point after SIGTERM; the work done so far is on disk."""

  def __init__(self, where: str):
    super().__init__(f"stopped at a safe point after SIGTERM ({where}); rerun the same "
                     "command to resume")
    self.where = where


def _handler(signum, frame):
  if not _requested.is_set():
    log.warning("SIGTERM: stopping at the next safe point (a second SIGTERM is not needed)")
  _requested.set()


def install() -> None:
  """Turns SIGTERM into a stop request (main thread only; idempotent)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _handler)


def request() -> None:
  """As if SIGTERM had arrived (tests, and callers with their own signal plumbing)."""
  _requested.set()


def clear() -> None:
  _requested.clear()


def requested() -> bool:
  """This process's flag alone (no communication)."""
  return _requested.is_set()


def check(where: str) -> None:
  """Raises Preempted on every process if any process got SIGTERM (collective call)."""
  if dist.any_process(_requested.is_set()):
    raise Preempted(where)
