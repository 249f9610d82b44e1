"""VerifierPool: verifies many items in parallel, under a hard deadline per item.

Each worker is a fresh Python process (`worker.py`) fed over a pipe. The pool keeps up to
`prefetch` items queued per worker and knows when each worker began its current item; a
worker that overruns the item's hard deadline is SIGKILLed (its sandbox dies with it), the
item becomes a logged 'timeout', and the items queued behind it go to its replacement.
A worker that dies costs its current item an 'error'. Workers are also replaced after
`max_items_per_worker` items or when their memory passes `max_worker_rss_mb`.

`map` pulls items lazily and yields verdicts in input order; it stops pulling while
`max_pending` items are in flight or waiting for an earlier one (back-pressure), so an
iterator of millions of items is fine. When code cannot be sandboxed at all (bwrap missing),
`map` raises SandboxUnavailable rather than failing every code item.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import selectors
import subprocess
import sys
import time
from typing import Iterable, Iterator

from rest_jax.verifiers.math_answers import ALL_FORMATS
from rest_jax.verifiers.sandbox import SandboxConfig, SandboxUnavailable
from rest_jax.verifiers.verdict import Verdict
from rest_jax.verifiers.worker import CheckOptions

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
# Imports rest_jax.verifiers without running rest_jax/__init__.py, whatever it may import
# (jax): a worker starts with the standard library, this package and math-verify only.
_BOOT = ("import sys,types;p=types.ModuleType('rest_jax');p.__path__=[sys.argv[1]];"
         "sys.modules['rest_jax']=p;from rest_jax.verifiers import worker;worker.main()")
_START_TIMEOUT_S = 60.0


@dataclasses.dataclass
class PoolStats:
  """Counts since the pool started, and the throughput of the last `map` call."""

  items: int = 0
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  seconds: float = 0.0
  restarts: int = 0
  last_items: int = 0
  last_seconds: float = 0.0

  @property
  def items_per_s(self) -> float:
    return self.last_items / self.last_seconds if self.last_seconds else 0.0


class _Worker:

  def __init__(self, options_line: bytes):
    self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, _PACKAGE_ROOT],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for stream in (self.proc.stdin, self.proc.stdout):
      os.set_blocking(stream.fileno(), False)
    self.inbox = b""  # partial reply
    self.outbox = bytearray(options_line)  # not yet written: writes never block the pool
    self.queue: collections.deque = collections.deque()  # (index, request line, hard limit s)
    self.ready = False
    self.started_at = time.monotonic()  # when the current head item began (or the boot)
    self.done = 0
    self.rss_mb = 0.0
    self.flush()

  def send(self, index: int, line: bytes, limit_s: float):
    if not self.queue:
      self.started_at = time.monotonic()
    self.queue.append((index, line, limit_s))
    self.outbox += line
    self.flush()

  def flush(self):
    try:
      del self.outbox[:os.write(self.proc.stdin.fileno(), self.outbox)]
    except (BlockingIOError, BrokenPipeError):
      pass  # full pipe: retried when writable; dead worker: seen as EOF on its stdout

  def read_lines(self) -> list[bytes] | None:
    """Complete lines available now; None once the worker has exited."""
    try:
      chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
    except BlockingIOError:
      return []
    if not chunk:
      return None
    *lines, self.inbox = (self.inbox + chunk).split(b"\n")
    return lines

  def stop(self):
    """Lets an idle worker exit by itself (stopping its spare sandbox), else kills it."""
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=2.0)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.kill()

  def kill(self):
    self.proc.kill()
    self.proc.wait()
    for stream in (self.proc.stdin, self.proc.stdout):
      try:
        stream.close()
      except OSError:
        pass


class VerifierPool:
  """A pool of verifier workers. `map(items)` yields one Verdict per item, in order.

  Items are dicts: {"completion": str, "answer": str} for math (optionally "formats"),
  {"completion": str, "tests": {...}, "prompt": str?} for code (formats in code_harness.py).
  One `map` at a time: a pool is not shared between threads.
  """

  def __init__(self, workers: int | None = None, *, math_timeout_s: float = 3.0,
               sandbox: SandboxConfig | None = None, formats: tuple[str, ...] = ALL_FORMATS,
               max_items_per_worker: int = 5000, max_worker_rss_mb: float = 1536.0,
               prefetch: int = 4, max_pending: int | None = None, grace_s: float = 1.0):
    self.options = CheckOptions(math_timeout_s, tuple(formats), sandbox or SandboxConfig())
    self.num_workers = workers or os.cpu_count() or 1
    self.max_items_per_worker = max_items_per_worker
    self.max_worker_rss_mb = max_worker_rss_mb
    self.prefetch = prefetch
    self.max_pending = max_pending or self.num_workers * prefetch * 8
    self.grace_s = grace_s
    self.stats = PoolStats()
    self._options_line = (json.dumps(self.options.to_json()) + "\n").encode()
    self._workers: list[_Worker] = []
    self._sel = selectors.DefaultSelector()

  def hard_deadline_s(self, item) -> float:
    """When a worker busy with this item is killed, counted from when it began the item."""
    if isinstance(item, dict) and "tests" in item:  # the sandbox's deadline, plus its start-up
      return self.options.sandbox.deadline_s + self.grace_s + 0.5
    return self.options.math_timeout_s + self.grace_s

  def map(self, items: Iterable[dict]) -> Iterator[Verdict]:
    """Verifies `items` in parallel; yields their verdicts in input order."""
    while len(self._workers) < self.num_workers:
      self._workers.append(self._spawn())
    source = iter(items)
    exhausted = False
    next_in = next_out = 0
    results: dict[int, Verdict] = {}
    start = time.monotonic()
    try:
      while True:
        while not exhausted and next_in - next_out < self.max_pending:
          worker = min(self._workers, key=lambda w: len(w.queue))
          if len(worker.queue) >= self.prefetch:
            break
          try:
            item = next(source)
          except StopIteration:
            exhausted = True
            break
          worker.send(next_in, (json.dumps({"i": next_in, "item": item}) + "\n").encode(),
                      self.hard_deadline_s(item))
          next_in += 1
        while next_out in results:
          yield results.pop(next_out)
          next_out += 1
        if exhausted and next_out == next_in:
          break
        self._wait(results)
    finally:
      for worker in list(self._workers):
        if worker.queue:  # abandoned mid-way: their replies would be misattributed later
          worker.queue.clear()
          self._replace(worker)
      elapsed = time.monotonic() - start
      self.stats.last_items, self.stats.last_seconds = next_out, elapsed
      self.stats.seconds += elapsed
      logger.info("verified %d items in %.2fs (%.1f/s; %s; %d worker restarts)", next_out,
                  elapsed, next_out / elapsed if elapsed else 0.0, dict(self.stats.counts),
                  self.stats.restarts)

  def verify(self, items: Iterable[dict]) -> list[Verdict]:
    return list(self.map(items))

  def _spawn(self) -> _Worker:
    worker = _Worker(self._options_line)
    self._sel.register(worker.proc.stdout, selectors.EVENT_READ, worker)
    return worker

  def _replace(self, worker: _Worker):
    self._sel.unregister(worker.proc.stdout)
    if worker.proc.stdin in self._sel.get_map():
      self._sel.unregister(worker.proc.stdin)
    worker.kill()
    fresh = self._spawn()
    self._workers[self._workers.index(worker)] = fresh
    self.stats.restarts += 1
    for entry in worker.queue:  # not answered: the replacement does them again
      fresh.send(*entry)

  def _record(self, index: int, verdict: Verdict, results: dict):
    results[index] = verdict
    self.stats.items += 1
    self.stats.counts[verdict.verdict] += 1
    if verdict.verdict == "timeout":
      logger.warning("verifier item %d timed out: %s", index, verdict.reason)

  def _deadline(self, worker: _Worker) -> float:
    if not worker.ready:
      return worker.started_at + _START_TIMEOUT_S
    return worker.started_at + worker.queue[0][2]

  def _wait(self, results: dict):
    for worker in self._workers:  # watch for room in the pipes of workers with unsent bytes
      key = self._sel.get_map().get(worker.proc.stdin)
      if worker.outbox and key is None:
        self._sel.register(worker.proc.stdin, selectors.EVENT_WRITE, worker)
      elif not worker.outbox and key is not None:
        self._sel.unregister(worker.proc.stdin)
    busy = [w for w in self._workers if w.queue]
    timeout = max(0.0, min(self._deadline(w) for w in busy) - time.monotonic()) if busy else 0.1
    for key, events in self._sel.select(timeout):
      worker = key.data
      if events & selectors.EVENT_WRITE:
        worker.flush()
        continue
      lines = worker.read_lines()
      if lines is None:
        self._died(worker, results)
        continue
      for line in lines:
        self._handle(worker, json.loads(line), results)
      if worker.done >= self.max_items_per_worker or worker.rss_mb > self.max_worker_rss_mb:
        self._replace(worker)  # recycled; items queued behind are handed over
    now = time.monotonic()
    for worker in [w for w in self._workers if w.queue and now > self._deadline(w)]:
      if not worker.ready:
        raise RuntimeError(f"a verifier worker did not start within {_START_TIMEOUT_S:g}s")
      index, _, limit = worker.queue.popleft()
      self._record(index, Verdict("timeout", None, f"killed at the {limit:g}s hard deadline"),
                   results)
      self._replace(worker)

  def _died(self, worker: _Worker, results: dict):
    if not worker.ready:
      raise RuntimeError(f"a verifier worker exited while starting (status "
                         f"{worker.proc.wait()}); its error is on stderr")
    if worker.queue:
      index, _, _ = worker.queue.popleft()
      self._record(index, Verdict("error", None, "verifier worker died"), results)
    self._replace(worker)

  def _handle(self, worker: _Worker, reply: dict, results: dict):
    if reply.get("ready"):
      worker.ready = True
      worker.started_at = time.monotonic()
      return
    if "fatal" in reply:
      raise SandboxUnavailable(reply["fatal"])
    index, _, _ = worker.queue.popleft()
    if index != reply.get("i"):
      raise RuntimeError(f"verifier worker answered item {reply.get('i')}, expected {index}")
    self._record(index, Verdict.from_json(reply), results)
    worker.started_at = time.monotonic()
    worker.done += 1
    worker.rss_mb = reply.get("rss_mb", 0.0)

  def close(self):
    for worker in self._workers:
      (worker.kill if worker.queue else worker.stop)()
    self._workers = []
    self._sel.close()
    self._sel = selectors.DefaultSelector()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
