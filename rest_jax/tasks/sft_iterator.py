"""A deterministic, checkpointable iterator over global batches of packed SFT rows.

The rows are read as one endless stream: epoch e is the rows in the order of a permutation
drawn from (seed, e), and global batch b is stream positions [b*B, (b+1)*B). So a batch is
a pure function of (rows, seed, b): the whole iterator state is the step b, nothing is
dropped at epoch ends (a batch may straddle two epochs), and every process computes the same
global batch and keeps its own slice of rows. Numpy only.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

STATE_VERSION = 1


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
  """A short digest of the rows, so a restore onto different data fails loudly."""
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(f"{k}:{a.dtype}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


class SFTIterator:
  """Yields this process's slice of each global batch, as a dict of numpy arrays.

  Args:
    arrays: feature name -> [num_rows, seq_len] array (e.g. `PackedSFT.arrays`).
    global_batch_size: rows per global batch, over all processes.
    seed: the shuffling seed (each epoch draws its own permutation from it).
    process_index, process_count: this process's rank and the number of processes; each
      gets rows [i * B/n, (i + 1) * B/n) of every global batch.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, *, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    if not arrays:
      raise ValueError("SFTIterator needs at least one feature array")
    shapes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
      raise ValueError(f"feature arrays disagree on the number of rows: {shapes}")
    self._arrays = dict(arrays)
    self.num_rows = next(iter(shapes.values()))
    if self.num_rows == 0:
      raise ValueError("SFTIterator needs at least one row")
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(f"global_batch_size ({global_batch_size}) must be positive and divisible "
                       f"by process_count ({process_count})")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    self.global_batch_size = global_batch_size
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.fingerprint = fingerprint(self._arrays)
    self.step = 0
    self._perms: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> float:
    """Global batches per pass over the rows (fractional: batches straddle epochs)."""
    return self.num_rows / self.global_batch_size

  @property
  def epoch(self) -> float:
    return self.step * self.global_batch_size / self.num_rows

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 4:  # a batch spans few epochs; keep the cache small
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._perms[epoch]

  def row_indices(self, step: int) -> np.ndarray:
    """The rows of global batch `step`, in batch order."""
    positions = step * self.global_batch_size + np.arange(self.global_batch_size)
    epochs, offsets = np.divmod(positions, self.num_rows)
    return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)], np.int64)

  def global_batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self.row_indices(step)
    return {k: v[rows] for k, v in self._arrays.items()}

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`."""
    per = self.global_batch_size // self.process_count
    rows = self.row_indices(step)[self.process_index * per:(self.process_index + 1) * per]
    return {k: v[rows] for k, v in self._arrays.items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.local_batch(self.step)
    self.step += 1
    return batch

  def state(self) -> dict:
    """A small JSON-able dict: the position and what it is a position in."""
    return {"version": STATE_VERSION, "step": self.step, "seed": self.seed,
            "global_batch_size": self.global_batch_size, "num_rows": self.num_rows,
            "fingerprint": self.fingerprint}

  def restore(self, state: Mapping) -> None:
    """Continues from a `state()`; refuses a state taken over other data or settings."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"SFT iterator state version {state.get('version')!r}, expected "
                       f"{STATE_VERSION}")
    for key in ("seed", "global_batch_size", "num_rows", "fingerprint"):
      if state.get(key) != getattr(self, key):
        raise ValueError(f"SFT iterator state has {key}={state.get(key)!r} but this iterator "
                         f"has {getattr(self, key)!r}: it was saved over other data or settings")
    step = state.get("step")
    if not isinstance(step, int) or step < 0:
      raise ValueError(f"SFT iterator state has an invalid step {step!r}")
    self.step = step
