"""Logged scalars, one JSON object per row, and TensorBoard events beside them.

On local disk the rows are appended to WORKDIR/metrics.jsonl and TensorBoard events go to
WORKDIR/tensorboard as they come. A bucket cannot append (gcsfs would rewrite the object, and
tensorboardX re-uploads the whole event file on every flush: quadratic in the run's length),
so on gs:// the rows are buffered and each flush writes one new immutable object,
WORKDIR/metrics/part-NNNNN.jsonl, and the events are written to a local file that is uploaded
once, when `flush` closes it; the next rows open a new event file (TensorBoard reads all of a
directory's files). `read_metrics` reads either layout.
"""

from __future__ import annotations

import json
import numbers
import re
import shutil
import tempfile
import time

from etils import epath

from rest_jax.runtime import storage

PARTS_DIR = "metrics"


class MetricsLog:
  """Writes scalars; only the writing process (process 0) should create one.

  Tags of TensorBoard scalars are `<phase>/<stage>/<name>`. On a bucket, rows reach storage at
  each `flush` (the loop flushes whenever it records a finished step) or `flush_s` seconds after
  the oldest row waiting, whichever comes first.
  """

  def __init__(self, workdir, tensorboard: bool = True, flush_s: float = 60.0):
    self.root = epath.Path(workdir)
    self.remote = storage.is_remote(self.root)
    self.path = self.root / "metrics.jsonl"
    self.flush_s = flush_s
    self._tensorboard = tensorboard
    self._tb = None
    self._tb_local = None
    self._pending: list[str] = []
    self._pending_since = 0.0
    if self.remote:
      self._next_part = _next_part_index(self.root)
    else:
      self.root.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, scalars: dict, **tags) -> None:
    values = {k: float(v) for k, v in scalars.items()
              if isinstance(v, numbers.Number) and not isinstance(v, bool)}
    row = {"time": round(time.time(), 3), "step": int(step), **tags, **values}
    line = json.dumps(row, sort_keys=True) + "\n"
    if self.remote:
      if not self._pending:
        self._pending_since = time.time()
      self._pending.append(line)
    else:
      with self.path.open("a") as f:
        f.write(line)
    if self._tensorboard:
      tb = self._writer()
      prefix = "/".join(str(v) for v in tags.values())
      for k, v in values.items():
        tag = (f"{prefix}/{k}" if prefix else k).replace("@", "_at_")  # TensorBoard's charset
        tb.add_scalar(tag, v, int(step))
      if not self.remote:
        tb.flush()
    if self.remote and time.time() - self._pending_since >= self.flush_s:
      self.flush()

  def _writer(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter
      if self.remote:
        self._tb_local = tempfile.mkdtemp(prefix="rest_jax_tb_")
        # Two event files opened within one second would share a name on the bucket.
        self._tb = SummaryWriter(self._tb_local, filename_suffix=f".{self._next_part:05d}")
      else:
        self._tb = SummaryWriter(str(self.root / "tensorboard"))
    return self._tb

  def flush(self) -> None:
    """Makes every row written so far durable (on a bucket: one new object each for the rows
    and for the events since the last flush)."""
    if not self.remote:
      if self._tb is not None:
        self._tb.flush()
      return
    if self._pending:
      storage.write_text(self.root / PARTS_DIR / f"part-{self._next_part:05d}.jsonl",
                         "".join(self._pending))
      self._next_part += 1
      self._pending = []
    if self._tb is not None:
      self._tb.close()
      storage.upload_tree(self._tb_local, self.root / "tensorboard")
      shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb = self._tb_local = None

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _next_part_index(root: epath.Path) -> int:
  parts = root / PARTS_DIR
  with storage.errors(parts, "list it"):
    names = [p.name for p in parts.iterdir()] if parts.exists() else []
  indices = [int(m.group(1)) for n in names if (m := re.fullmatch(r"part-(\d+)\.jsonl", n))]
  return max(indices, default=-1) + 1


def read_metrics(workdir) -> list[dict]:
  """Every logged row of a run, oldest first, from metrics.jsonl (local disk) and/or
  metrics/part-*.jsonl (a bucket)."""
  root = epath.Path(workdir)
  texts = []
  if (root / "metrics.jsonl").exists():
    texts.append(storage.read_text(root / "metrics.jsonl"))
  if (root / PARTS_DIR).exists():
    parts = sorted(p for p in (root / PARTS_DIR).iterdir()
                   if re.fullmatch(r"part-\d+\.jsonl", p.name))
    texts += [storage.read_text(p) for p in parts]
  return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]

