"""safetensors files read by slices (memory-mapped) and written one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`) and the
raw tensor bytes. Reading maps the file and returns views, so a slice of a tensor costs only
the pages it touches; writing streams each tensor to disk as it comes, so exporting a model
never holds more than one tensor on the host. Every inconsistency (truncation, bad header,
offsets past the end) raises `WeightsError` naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from rest_jax.models.weights import WeightsError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2 ** 20


class SafetensorsFile:
  """One safetensors file: names, shapes, and memory-mapped tensors (no data read up front)."""

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    try:
      size = os.path.getsize(self.path)
      with open(self.path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise WeightsError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
          raise WeightsError(f"{self.path}: corrupt or truncated safetensors file (header of "
                             f"{n} bytes, file of {size} bytes)")
        header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
      raise WeightsError(f"{self.path}: cannot read safetensors file: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise WeightsError(f"{self.path}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
      raise WeightsError(f"{self.path}: corrupt safetensors header (not a JSON object)")
    self.metadata = header.pop("__metadata__", None) or {}
    self._data_start = 8 + n
    self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    data_size = size - self._data_start
    for name, e in header.items():
      try:
        dtype = DTYPES[e["dtype"]]
        shape = tuple(int(d) for d in e["shape"])
        begin, end = (int(o) for o in e["data_offsets"])
      except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{self.path}: corrupt header entry for tensor {name!r}: {e!r}") from err
      if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or begin < 0:
        raise WeightsError(f"{self.path}: tensor {name!r} has shape {shape} {e['dtype']} but "
                           f"{end - begin} bytes")
      if end > data_size:
        raise WeightsError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                           f"{self._data_start + end}, the file has {size}")
      self._entries[name] = (dtype, shape, begin, end)
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entries[name][1]

  def dtype(self, name: str) -> np.dtype:
    return self._entries[name][0]

  def array(self, name: str) -> np.ndarray:
    """A read-only memory-mapped view: slicing it reads only the touched pages."""
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    dtype, shape, begin, end = self._entries[name]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(dtype).reshape(shape)


def write(path: str | os.PathLike, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, object]],
          metadata: dict[str, str] | None = None) -> None:
  """Writes a safetensors file from `(name, shape, dtype, produce)` entries.

  `produce()` is called once per tensor, in order, right before its bytes are written, so only
  one tensor is on the host at a time. The file appears under `path` only once complete.
  """
  entries = list(tensors)
  header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, shape, dtype, _ in entries:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype, produce in entries:
      arr = np.ascontiguousarray(np.asarray(produce(), dtype=np.dtype(dtype)))
      if arr.shape != tuple(shape):
        raise ValueError(f"tensor {name!r}: produced shape {arr.shape}, declared {tuple(shape)}")
      f.write(arr.tobytes())
  os.replace(tmp, path)
