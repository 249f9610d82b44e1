"""The run's directory: paths, atomic writes, and `state.json`.

Every file is written whole and atomically (`storage.write_text`: a temporary and a rename on
local disk, one upload on a bucket), so a run killed at any instant leaves either the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

from etils import epath

from rest_jax.runtime import storage


def write_text(path, text: str) -> None:
  storage.write_text(path, text)


def write_json(path, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_default) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
  write_text(path, "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows))


def read_json(path) -> Any:
  return json.loads(storage.read_text(path))


def read_jsonl(path) -> list[dict]:
  out = []
  for n, line in enumerate(storage.read_text(path).splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
  return out


def _default(o):
  if hasattr(o, "tolist"):
    return o.tolist()
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclasses.dataclass
class RunState:
  """Where the loop is. `done` lists finished steps by name, e.g. 'iter_001/generate'."""

  done: list[str] = dataclasses.field(default_factory=list)
  shards: dict[str, list[int]] = dataclasses.field(default_factory=dict)
  best_iteration: int | None = None
  stopped_early: bool = False
  finished: bool = False

  def is_done(self, step: str) -> bool:
    return step in self.done

  def mark(self, step: str) -> None:
    if step not in self.done:
      self.done.append(step)
    self.shards.pop(step, None)

  def forget(self, stage: str) -> None:
    """Drops every finished step and shard record of `stage` (e.g. 'iter_001')."""
    self.done = [d for d in self.done if not d.startswith(f"{stage}/")]
    self.shards = {k: v for k, v in self.shards.items() if not k.startswith(f"{stage}/")}


class Workdir:
  """Paths of the layout described in DESIGN.md."""

  def __init__(self, root):
    self.root = epath.Path(root)

  @property
  def state_path(self) -> epath.Path:
    return self.root / "state.json"

  def load_state(self) -> RunState | None:
    if not self.state_path.exists():
      return None
    return RunState(**read_json(self.state_path))

  def save_state(self, state: RunState) -> None:
    write_json(self.state_path, dataclasses.asdict(state))

  def aside_path(self, stage: str, why: str) -> epath.Path:
    """The first free `STAGE.WHY.N` beside `stage`'s directory (where `set_aside` moves it)."""
    n = 1
    while (self.root / f"{stage}.{why}.{n}").exists():
      n += 1
    return self.root / f"{stage}.{why}.{n}"

  def iteration_dir(self, i: int) -> epath.Path:
    return self.root / f"iter_{i:03d}"

  def shard_path(self, subdir: epath.Path, index: int, count: int) -> epath.Path:
    return subdir / f"shard-{index:05d}-of-{count:05d}.jsonl"

  @property
  def checkpoints(self) -> epath.Path:
    return self.root / "checkpoints"
