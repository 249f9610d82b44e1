"""The GGUF container (llama.cpp's file format): metadata as Python values, a tensor index.

A direct parser: `gguf`'s reader spends ~15 s building objects for Gemma's 262k-token
vocabulary. It lives with the tokenizers because both they and `models.gguf_import` read it
(a GGUF file carries the vocabulary and the weights), and tokenizers import nothing of models.
"""

from __future__ import annotations

import struct

import numpy as np


class GGUFFormatError(ValueError):
  """A file that is not a readable GGUF file; the message names the file."""


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}



class GGUFTensorInfo:
  __slots__ = ("name", "dims", "qtype", "offset", "nbytes", "rows", "row_bytes")

  def __init__(self, name, dims, qtype, offset, nbytes, rows, row_bytes):
    self.name, self.dims, self.qtype, self.offset = name, dims, qtype, offset
    self.nbytes, self.rows, self.row_bytes = nbytes, rows, row_bytes

  @property
  def hf_shape(self) -> tuple[int, ...]:
    """numpy/torch order: GGUF lists the fastest-varying dimension first."""
    return tuple(reversed(self.dims))


class GGUFFile:
  """A GGUF file parsed directly (metadata into Python values, tensors as memory-mapped rows).

  Faster than `gguf.GGUFReader` on large vocabularies (it builds an object per array element),
  and every inconsistency raises `GGUFFormatError` naming the file.
  """

  def __init__(self, path: str):
    import gguf
    self.path = path
    try:
      self._mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
      raise GGUFFormatError(f"{path}: cannot read GGUF file: {e}") from e
    buf = memoryview(self._mm)
    size = len(buf)
    if bytes(buf[:4]) != b"GGUF":
      raise GGUFFormatError(f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r}, "
                         "expected b'GGUF')")
    pos = 4

    def take(fmt):
      nonlocal pos
      n = struct.calcsize(fmt)
      if pos + n > size:
        raise GGUFFormatError(f"{path}: truncated GGUF file (metadata runs past the end at byte "
                           f"{pos}, the file has {size})")
      (v,) = struct.unpack_from(fmt, buf, pos)
      pos += n
      return v

    def string():
      nonlocal pos
      n = take("<Q")
      if pos + n > size:
        raise GGUFFormatError(f"{path}: truncated GGUF file (a string runs past the end)")
      s = bytes(buf[pos:pos + n]).decode("utf-8", errors="replace")
      pos += n
      return s

    def value(vtype):
      nonlocal pos
      if vtype in _SCALARS:
        return take(_SCALARS[vtype])
      if vtype == 8:
        return string()
      if vtype == 9:
        etype, count = take("<I"), take("<Q")
        if etype in _NP:
          dt = np.dtype(_NP[etype])
          if pos + count * dt.itemsize > size:
            raise GGUFFormatError(f"{path}: truncated GGUF file (an array runs past the end)")
          arr = np.frombuffer(buf, dt, count, pos).copy()
          pos += count * dt.itemsize
          return arr
        return [value(etype) for _ in range(count)]
      raise GGUFFormatError(f"{path}: corrupt GGUF metadata (value type {vtype} at byte {pos})")

    version = take("<I")
    if version not in (2, 3):
      raise GGUFFormatError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = take("<Q"), take("<Q")
    if n_tensors > 10 ** 6 or n_kv > 10 ** 6:
      raise GGUFFormatError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    self.fields: dict[str, object] = {}
    for _ in range(n_kv):
      key = string()
      self.fields[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
      name = string()
      n_dims = take("<I")
      if n_dims > 8:
        raise GGUFFormatError(f"{path}: corrupt tensor info for {name!r} ({n_dims} dims)")
      dims = tuple(int(take("<Q")) for _ in range(n_dims))
      qtype, offset = take("<I"), take("<Q")
      infos.append((name, dims, qtype, offset))
    align = int(self.fields.get("general.alignment", 32))
    data_start = -(-pos // align) * align
    self.tensors: dict[str, GGUFTensorInfo] = {}
    for name, dims, qtype, offset in infos:
      try:
        qt = gguf.GGMLQuantizationType(qtype)
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
      except (ValueError, KeyError) as e:
        raise GGUFFormatError(f"{path}: tensor {name!r} has unknown type {qtype}") from e
      if dims[0] % block:
        raise GGUFFormatError(f"{path}: tensor {name!r}: row of {dims[0]} is not a multiple of "
                           f"the {qt.name} block of {block}")
      row_bytes = dims[0] // block * type_size
      rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
      start = data_start + offset
      if start + rows * row_bytes > size:
        raise GGUFFormatError(f"{path}: truncated: tensor {name!r} ends at byte "
                           f"{start + rows * row_bytes}, the file has {size}")
      self.tensors[name] = GGUFTensorInfo(name, dims, qt, start, rows * row_bytes, rows,
                                          row_bytes)

  def raw_rows(self, t: GGUFTensorInfo, lo: int, hi: int) -> np.ndarray:
    """uint8 [hi - lo, row_bytes]: the stored bytes of rows lo..hi (1-D tensors: one row)."""
    flat = self._mm[t.offset:t.offset + t.nbytes].reshape(t.rows, t.row_bytes)
    return flat[lo:hi]

  def tokenizer_metadata(self) -> dict:
    """The `tokenizer.*` fields (`tokenizer.ggml.tokens`, ... , `tokenizer.chat_template`)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in self.fields.items() if k.startswith("tokenizer.")}
