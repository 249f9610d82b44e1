"""Collective traffic of a compiled program, read from its optimised per-device HLO text.

XLA's cost analysis counts a while loop's body once (a layer scan under-counts by the number of
layers), so this walks the program's call graph and multiplies what a loop body moves by the
loop's trip count: the `known_trip_count` XLA records, or else the bound `N` of the loop
condition's `i < N` (the TPU compiler's form; counters start at 0).

The TPU compiler splits one collective into a chain of async fusions that each name the whole
result; they share the collective's `channel_id`, so a channel is counted once (at the most
executions any of its pieces has).

Bytes are what one chip sends or receives per call, on a ring: an all-gather receives
(g - 1) / g of its result, an all-reduce moves twice that of its operand, a reduce-scatter
(g - 1) times its result, an all-to-all (g - 1) / g, a collective-permute its whole buffer.
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
             "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
             "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) ([a-z][a-z0-9\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass
class Collective:
  kind: str
  dtype: str
  shape: tuple[int, ...]     # the result (the largest array of an async start's tuple)
  group: int                 # devices taking part together
  times: int                 # executions per call of the program (loop trip counts)
  channel: str = ""          # its channel_id ("" when the HLO names none)

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * _ITEMSIZE.get(self.dtype, 4)

  @property
  def traffic(self) -> float:
    """Bytes this chip sends or receives, per execution (ring algorithms)."""
    g, b = max(self.group, 1), self.nbytes
    return {"all-gather": b * (g - 1) / g, "all-reduce": 2 * b * (g - 1) / g,
            "reduce-scatter": b * (g - 1), "all-to-all": b * (g - 1) / g,
            "collective-permute": b}[self.kind]


def _group_size(line: str, num_devices: int) -> int:
  m = re.search(r"replica_groups=\[([\d,]+)\]<=", line)         # iota: [groups, size]
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line)   # named mesh axes
  if m:
    sizes = dict(re.findall(r"'([\w]+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([\w]+)'", m.group(2)))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)          # explicit groups
  if m:
    return len(m.group(1).split(","))
  m = re.search(r"source_target_pairs=", line)
  return 2 if m else num_devices


def _kind(op: str) -> str | None:
  base = op[:-len("-start")] if op.endswith("-start") else op
  return base if base in KINDS else None


def _parse(text: str):
  """{computation: (lines)}, the entry computation's name."""
  comps, entry, name = {}, None, None
  for line in text.splitlines():
    m = _HEADER.match(line)
    if m:
      name = m.group(1)
      comps[name] = []
      if line.startswith("ENTRY"):
        entry = name
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps, entry


def _trip_count(line: str, comps: dict) -> int | None:
  m = _TRIP.search(line)
  if m:
    return int(m.group(1))
  cond = re.search(r"\bcondition=%([\w.\-]+)", line)
  body = comps.get(cond.group(1), []) if cond else []
  if any("direction=LT" in l for l in body):
    bounds = [int(c) for l in body for c in re.findall(r"\bconstant\((\d+)\)", l)]
    if len(bounds) == 1:
      return bounds[0]
  return None


def collectives(text: str, num_devices: int) -> tuple[list[Collective], list[str]]:
  """Every collective of the program with how often one call runs it, and the while loops
  whose trip count could not be read (counted once)."""
  comps, entry = _parse(text)
  unknown: list[str] = []
  out: list[Collective] = []

  def walk(name: str, times: int, stack: tuple):
    if name not in comps or name in stack:
      return
    for line in comps[name]:
      m = _OP.match(line)
      if not m:
        continue
      types, op = m.groups()
      kind = _kind(op)
      if kind is not None:
        arrays = [(d, tuple(int(x) for x in s.split(",") if x)) for d, s in _ARRAY.findall(types)
                  if d in _ITEMSIZE]
        if arrays:
          dtype, shape = max(arrays, key=lambda a: math.prod(a[1]) * _ITEMSIZE[a[0]])
          channel = re.search(r"\bchannel_id=(\d+)", line)
          out.append(Collective(kind, dtype, shape, _group_size(line, num_devices), times,
                                channel.group(1) if channel else ""))
      callees = [(k, c) for k, c in _CALLEE.findall(line)]
      for group in _BRANCHES.findall(line):
        callees += [("branch", c.strip().lstrip("%")) for c in group.split(",") if c.strip()]
      for k, callee in callees:
        mult = 1
        if op == "while" and k == "body":
          trips = _trip_count(line, comps)
          if trips is None:
            unknown.append(callee)
          mult = trips or 1
        walk(callee, times * mult, stack + (name,))

  if entry is not None:
    walk(entry, 1, ())
  by_channel: dict[str, Collective] = {}
  for c in out:
    if c.channel:
      kept = by_channel.get(c.channel)
      if kept is None or (c.times, c.nbytes) > (kept.times, kept.nbytes):
        by_channel[c.channel] = c
  return [c for c in out if not c.channel] + list(by_channel.values()), unknown


def traffic_by_kind(text: str, num_devices: int) -> dict[str, float]:
  """{kind: bytes per chip per call}, loop bodies counted as often as they run."""
  found, _ = collectives(text, num_devices)
  out: dict[str, float] = {}
  for c in found:
    out[c.kind] = out.get(c.kind, 0.0) + c.traffic * c.times
  return out
