"""Logged scalars: `metrics.jsonl` (one JSON object per line) and TensorBoard events beside it."""

from __future__ import annotations

import json
import numbers
import time

from etils import epath


class MetricsLog:
  """Appends scalars; only the writing process (process 0) should create one.

  TensorBoard events go to WORKDIR/tensorboard through tensorboardX (no TensorFlow needed);
  tags are `<phase>/<stage>/<name>`.
  """

  def __init__(self, workdir, tensorboard: bool = True):
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: dict, **tags) -> None:
    values = {k: float(v) for k, v in scalars.items()
              if isinstance(v, numbers.Number) and not isinstance(v, bool)}
    row = {"time": round(time.time(), 3), "step": int(step), **tags, **values}
    with self.path.open("a") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
    if self._tb is not None:
      prefix = "/".join(str(v) for v in tags.values())
      for k, v in values.items():
        tag = (f"{prefix}/{k}" if prefix else k).replace("@", "_at_")  # TensorBoard's charset
        self._tb.add_scalar(tag, v, int(step))
      self._tb.flush()
