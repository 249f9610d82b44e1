"""TPU slices by the names users type for gcloud (`v4-32`, `v5litepod-16`, `v5p-128`, `v6e-64`),
their published per-chip figures, and their devices for compiling without a TPU.

`jax.experimental.topologies.get_topology_desc` wants `KIND:AxBxC`; a malformed name aborts
the process (SIGABRT), so names are checked against the shapes below before it is called.
See ../shared/TPU_COMPILE_ONLY.md.
"""

from __future__ import annotations

import dataclasses
import os
import re


class SliceError(ValueError):
  """An accelerator name that is not a known TPU slice; the message lists valid ones."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (Cloud TPU documentation): bf16 dense FLOP/s, HBM bytes/s,
  ICI bytes/s (all links, one direction), and the usable HBM per device that the compiler
  reports in its out-of-memory messages (GiB)."""

  family: str
  peak_flops: float
  hbm_bandwidth: float
  ici_bandwidth: float
  usable_hbm: float
  name_counts_cores: bool      # v4-32 and v5p-128 count TensorCores (2 per chip), v5e/v6e chips
  dims: int                    # torus dimensions of the topology name
  topology_kind: str           # the KIND of `KIND:AxBxC`
  chip_config_name: str | None = None
  # v5e and v6e route ICI only within a whole slice: the compiler refuses (or aborts on) a
  # program over some of a multi-host slice's chips, e.g. one host's.
  subslice_programs: bool = True


_G = 2 ** 30   # the compiler's "G" in its out-of-memory messages
CHIPS = {
    "v4": Chip("v4", 275e12, 1.2e12, 4 * 50e9, 30.75 * _G, True, 3, "v4", "megacore"),
    "v5e": Chip("v5e", 197e12, 0.819e12, 4 * 50e9, 15.75 * _G, False, 2, "v5e",
                subslice_programs=False),
    "v5p": Chip("v5p", 459e12, 2.765e12, 6 * 100e9, 95.74 * _G, True, 3, "v5p"),
    "v6e": Chip("v6e", 918e12, 1.64e12, 4 * 112e9, 31.25 * _G, False, 2, "v6e",
                subslice_programs=False),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p"}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str                     # as given, e.g. 'v5p-128'
  chip: Chip
  chips: int                    # per slice
  shape: tuple[int, ...]
  num_slices: int = 1

  @property
  def topology_name(self) -> str:
    return f"{self.chip.topology_kind}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    # One host drives 4 chips (2x2), except single-host v5e/v6e slices of up to 8 chips.
    if self.chip.dims == 2 and self.chips <= 8:
      return (self.shape[0], self.shape[1], 1)
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    b = self.chips_per_host_bounds
    return self.num_slices * max(1, self.chips // (b[0] * b[1] * b[2]))

  def devices(self):
    """The slice's TPU devices (one per chip, megacore), for a mesh to compile against."""
    # Without a TPU, libtpu serves compilation only; let several such processes load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      from jax.experimental import topologies
    except ImportError as e:   # pragma: no cover - jax always has it
      raise SliceError(f"{self.name}: this jax cannot describe TPU topologies: {e}") from e
    kw = {"chip_config_name": self.chip.chip_config_name} if self.chip.chip_config_name else {}
    try:
      topo = topologies.get_topology_desc(
          platform="tpu", topology_name=self.topology_name,
          chips_per_host_bounds=self.chips_per_host_bounds, num_slices=self.num_slices, **kw)
    except Exception as e:  # pylint: disable=broad-except
      raise SliceError(f"{self.name}: cannot describe this TPU slice ({e}); is libtpu "
                       "installed? (pip install '.[tpu]')") from e
    return list(topo.devices)


def valid_names() -> list[str]:
  names = []
  for fam, chip in CHIPS.items():
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    per = 2 if chip.name_counts_cores else 1
    names += [f"{fam}-{n * per}" for n in sorted(shapes)]
  return names


def parse(name: str, num_slices: int = 1) -> Slice:
  """'v5p-128' (or 'v5litepod-16', or the topology form 'v5e:4x4') -> Slice."""
  if num_slices < 1:
    raise SliceError(f"--num_slices must be >= 1, got {num_slices}")
  m = re.fullmatch(r"(v\d+[a-z]*|v5litepod)-(\d+)", name.strip())
  t = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", name.strip())
  if not m and not t:
    raise SliceError(f"unknown TPU slice {name!r}: expected a gcloud accelerator type such as "
                     f"{', '.join(valid_names()[:6])}, ... (all: {' '.join(valid_names())})")
  fam = _ALIASES.get((m or t).group(1), (m or t).group(1))
  chip = CHIPS.get(fam)
  if chip is None:
    raise SliceError(f"unknown TPU generation {(m or t).group(1)!r} in {name!r}: known "
                     f"{', '.join(CHIPS)} (also v5litepod)")
  shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
  if t:
    shape = tuple(int(x) for x in t.group(2).split("x"))
    chips = 1
    for x in shape:
      chips *= x
    if len(shape) != chip.dims or shapes.get(chips) != shape:
      raise SliceError(f"{name!r}: {fam} topologies are {chip.dims}-D; valid: "
                       f"{', '.join(f'{fam}:' + 'x'.join(map(str, s)) for s in shapes.values())}")
  else:
    n = int(m.group(2))
    chips = n // 2 if chip.name_counts_cores else n
    if (chip.name_counts_cores and n % 2) or chips not in shapes:
      raise SliceError(f"unknown TPU slice {name!r}: valid {fam} slices are "
                       f"{', '.join(v for v in valid_names() if v.startswith(fam + '-'))}")
    shape = shapes[chips]
  return Slice(name, chip, chips, shape, num_slices)
