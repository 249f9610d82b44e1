"""GGUF files (llama.cpp): the model config from metadata, tensors dequantised on demand.

`GGUFModel(path)` parses the header and metadata (`GGUFFile`, a direct parser: `gguf`'s
reader spends ~15 s building objects for Gemma's 262k-token vocabulary) and memory-maps the
tensor data; `config()` builds the `ModelConfig` from the metadata (architecture -> family:
`llama`, `qwen2`, `gemma3`), `tokenizer()` the tokenizer, and the model itself is a
`TensorSource` that presents the tensors under their Hugging Face names and layout,
dequantised with the `gguf` package (every type it implements: F32, F16, BF16, Q4_0/1,
Q5_0/1, Q8_0, the K-quants, ...).

Dequantisation is row by row (each row of a quantised matrix is its own run of blocks), so a
shard that needs rows `a:b` dequantises only those rows. Two conversions undo llama.cpp's
converter, as `transformers` does:

* `llama` files store Q and K rows permuted for llama.cpp's interleaved RoPE; they are permuted
  back to the half-split layout rest_jax (and Hugging Face) use, head by head;
* Gemma files store RMSNorm scales with the +1 already added; 1 is subtracted, since the
  model applies `(1 + scale)`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import struct

import numpy as np

from rest_jax.models.config import ModelConfig, RopeScaling, gemma3_local_layers, rope_inv_freq
from rest_jax.models.weights import WeightsError

log = logging.getLogger(__name__)

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3"}

# Hugging Face name suffix (after `model.layers.{i}.`) -> GGUF name suffix (after `blk.{i}.`).
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LAYER_NAMES_PLAIN = {"post_attention_layernorm.weight": "ffn_norm.weight"}
_LAYER_NAMES_GEMMA = {
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


def _f32(x) -> float:
  """The shortest decimal of a float32 metadata value (1e-05, not 9.999999747378752e-06)."""
  return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


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
  and every inconsistency raises `WeightsError` naming the file.
  """

  def __init__(self, path: str):
    import gguf
    self.path = path
    try:
      self._mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
      raise WeightsError(f"{path}: cannot read GGUF file: {e}") from e
    buf = memoryview(self._mm)
    size = len(buf)
    if bytes(buf[:4]) != b"GGUF":
      raise WeightsError(f"{path}: not a GGUF file (starts with {bytes(buf[:4])!r}, "
                         "expected b'GGUF')")
    pos = 4

    def take(fmt):
      nonlocal pos
      n = struct.calcsize(fmt)
      if pos + n > size:
        raise WeightsError(f"{path}: truncated GGUF file (metadata runs past the end at byte "
                           f"{pos}, the file has {size})")
      (v,) = struct.unpack_from(fmt, buf, pos)
      pos += n
      return v

    def string():
      nonlocal pos
      n = take("<Q")
      if pos + n > size:
        raise WeightsError(f"{path}: truncated GGUF file (a string runs past the end)")
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
            raise WeightsError(f"{path}: truncated GGUF file (an array runs past the end)")
          arr = np.frombuffer(buf, dt, count, pos).copy()
          pos += count * dt.itemsize
          return arr
        return [value(etype) for _ in range(count)]
      raise WeightsError(f"{path}: corrupt GGUF metadata (value type {vtype} at byte {pos})")

    version = take("<I")
    if version not in (2, 3):
      raise WeightsError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = take("<Q"), take("<Q")
    if n_tensors > 10 ** 6 or n_kv > 10 ** 6:
      raise WeightsError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
    self.fields: dict[str, object] = {}
    for _ in range(n_kv):
      key = string()
      self.fields[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
      name = string()
      n_dims = take("<I")
      if n_dims > 8:
        raise WeightsError(f"{path}: corrupt tensor info for {name!r} ({n_dims} dims)")
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
        raise WeightsError(f"{path}: tensor {name!r} has unknown type {qtype}") from e
      if dims[0] % block:
        raise WeightsError(f"{path}: tensor {name!r}: row of {dims[0]} is not a multiple of "
                           f"the {qt.name} block of {block}")
      row_bytes = dims[0] // block * type_size
      rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
      start = data_start + offset
      if start + rows * row_bytes > size:
        raise WeightsError(f"{path}: truncated: tensor {name!r} ends at byte "
                           f"{start + rows * row_bytes}, the file has {size}")
      self.tensors[name] = GGUFTensorInfo(name, dims, qt, start, rows * row_bytes, rows,
                                          row_bytes)

  def raw_rows(self, t: GGUFTensorInfo, lo: int, hi: int) -> np.ndarray:
    """uint8 [hi - lo, row_bytes]: the stored bytes of rows lo..hi (1-D tensors: one row)."""
    flat = self._mm[t.offset:t.offset + t.nbytes].reshape(t.rows, t.row_bytes)
    return flat[lo:hi]


class GGUFModel:
  """One GGUF file: its metadata, and its tensors as a `TensorSource` (Hugging Face names)."""

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    self.description = self.path
    self.file = GGUFFile(self.path)
    self.arch = self.get("general.architecture")
    if self.arch not in FAMILIES:
      raise WeightsError(f"{self.path}: GGUF architecture {self.arch!r} is not supported; "
                         f"supported: {sorted(FAMILIES)}")
    self.family = FAMILIES[self.arch]
    self._tensors = self.file.tensors
    self._cfg: ModelConfig | None = None
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self.cache_bytes = 1 << 30
    self._hf_to_gguf = self._name_map()

  # ---- metadata ----
  def get(self, key: str, default=None):
    value = self.file.fields.get(key, default)
    if isinstance(value, np.ndarray):
      return value.tolist()
    return value

  def _need(self, key: str):
    value = self.get(f"{self.arch}.{key}")
    if value is None:
      raise WeightsError(f"{self.path}: metadata lacks {self.arch}.{key}")
    return value

  def config(self) -> ModelConfig:
    """The ModelConfig the metadata describes (the file wins over any preset)."""
    if self._cfg is not None:
      return self._cfg
    a = self.arch
    embed = self._tensors.get("token_embd.weight")
    if embed is None:
      raise WeightsError(f"{self.path}: no token_embd.weight tensor")
    vocab = int(embed.hf_shape[0])
    heads = int(self._need("attention.head_count"))
    embed_dim = int(self._need("embedding_length"))
    head_dim = int(self.get(f"{a}.attention.key_length") or self.get(f"{a}.rope.dimension_count")
                   or embed_dim // heads)
    layers = int(self._need("block_count"))
    kw = dict(
        family=self.family, vocab_size=vocab, num_layers=layers, embed_dim=embed_dim,
        num_heads=heads, num_kv_heads=int(self.get(f"{a}.attention.head_count_kv") or heads),
        head_dim=head_dim, mlp_dim=int(self._need("feed_forward_length")),
        max_seq_len=int(self.get(f"{a}.context_length") or 2048),
        rope_theta=_f32(self.get(f"{a}.rope.freq_base") or 10_000.0),
        norm_eps=_f32(self.get(f"{a}.attention.layer_norm_rms_epsilon") or 1e-6),
        tie_embeddings="output.weight" not in self._tensors,
        qkv_bias="blk.0.attn_q.bias" in self._tensors,
        rope_scaling=self._rope_scaling(head_dim),
    )
    if self.family == "gemma3":
      pattern = self.get(f"{a}.attention.sliding_window_pattern")
      if isinstance(pattern, list):
        local = tuple(bool(x) for x in pattern)
      else:
        local = gemma3_local_layers(layers, int(pattern or 6))
      kw.update(
          norm_scale_offset=1.0, activation="gelu_tanh", qk_norm=True, post_norms=True,
          scale_embeddings=True,
          rope_local_theta=float(self.get(f"{a}.rope.freq_base_swa") or 10_000.0),
          # llama.cpp: Gemma 3 27B scales queries by embed/heads, the others by head_dim.
          query_scale=float(embed_dim // heads if layers == 62 else head_dim),
          sliding_window=int(self._need("attention.sliding_window")), local_layers=local,
          final_logit_softcap=self.get(f"{a}.final_logit_softcapping"))
      if self.get(f"{a}.attn_logit_softcapping"):
        raise WeightsError(f"{self.path}: attention logit soft-capping is not supported")
    try:
      self._cfg = ModelConfig(**kw)
    except ValueError as e:
      raise WeightsError(f"{self.path}: inconsistent metadata: {e}") from e
    return self._cfg

  def _rope_scaling(self, head_dim: int) -> RopeScaling | None:
    a = self.arch
    kind = self.get(f"{a}.rope.scaling.type")
    factor = self.get(f"{a}.rope.scaling.factor")
    if "rope_freqs.weight" in self._tensors:
      return self._llama3_scaling(head_dim)
    if kind in (None, "none") or not factor or float(factor) == 1.0:
      return None
    if kind == "linear":
      return RopeScaling("linear", float(factor))
    raise WeightsError(f"{self.path}: RoPE scaling {kind!r} is not supported")

  def _llama3_scaling(self, head_dim: int) -> RopeScaling:
    """Llama 3.1-style scaling is stored as per-frequency factors: find the settings."""
    t = self._tensors["rope_freqs.weight"]
    factors = self._dequantize(t, 0, t.rows).reshape(-1).astype(np.float64)
    theta = float(self.get(f"{self.arch}.rope.freq_base") or 10_000.0)
    base = rope_inv_freq(head_dim, theta, None)
    orig = int(self.get(f"{self.arch}.rope.scaling.original_context_length") or 8192)
    for factor in (float(self.get(f"{self.arch}.rope.scaling.factor") or 0), 8.0, 32.0, 16.0,
                   4.0):
      if not factor:
        continue
      s = RopeScaling("llama3", factor, 1.0, 4.0, orig)
      if np.allclose(base / rope_inv_freq(head_dim, theta, s), factors, rtol=1e-4):
        return s
    raise WeightsError(f"{self.path}: rope_freqs.weight holds RoPE factors that match no "
                       "supported scaling")

  # ---- tensors (TensorSource) ----
  def _name_map(self) -> dict[str, str]:
    out = dict(_GLOBAL_NAMES)
    extra = _LAYER_NAMES_GEMMA if self.family == "gemma3" else _LAYER_NAMES_PLAIN
    layers = int(self.get(f"{self.arch}.block_count") or 0)
    for i in range(layers):
      for hf, gg in {**_LAYER_NAMES, **extra}.items():
        out[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    return {hf: gg for hf, gg in out.items() if gg in self._tensors}

  def names(self) -> set[str]:
    return set(self._hf_to_gguf)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._tensors[self._hf_to_gguf[name]].hf_shape

  def file_of(self, name: str) -> str:
    return self.path

  def gguf_name(self, name: str) -> str:
    return self._hf_to_gguf[name]

  def tensor_type(self, name: str) -> str:
    return self._tensors[self._hf_to_gguf[name]].qtype.name

  def _permuted_heads(self, gname: str) -> int | None:
    """llama.cpp permutes Q/K rows of `llama` models; the number of heads, else None."""
    if self.arch != "llama":
      return None
    cfg = self.config()
    if re.search(r"\.attn_q\.(weight|bias)$", gname):
      return cfg.num_heads
    if re.search(r"\.attn_k\.(weight|bias)$", gname):
      return cfg.num_kv_heads
    return None

  def _dequantize(self, t: GGUFTensorInfo, lo: int, hi: int) -> np.ndarray:
    """float32 [hi - lo, dims[0]]: rows lo..hi, dequantised (recent results are kept).

    Shards that split a matrix by columns all need the same rows; the small cache (at most
    `cache_bytes`, or one tensor if larger) dequantises them once instead of once per shard.
    """
    key = (t.name, lo, hi)
    hit = self._cache.get(key)
    if hit is not None:
      self._cache.move_to_end(key)
      return hit
    from gguf import dequantize
    try:
      data = dequantize(np.asarray(self.file.raw_rows(t, lo, hi)), t.qtype)
    except NotImplementedError as e:
      raise WeightsError(f"{self.path}: tensor {t.name!r}: {e}") from e
    data = np.asarray(data, np.float32).reshape(hi - lo, t.dims[0])
    data.setflags(write=False)
    self._cache[key] = data
    total = sum(a.nbytes for a in self._cache.values())
    while len(self._cache) > 1 and total > self.cache_bytes:
      total -= self._cache.popitem(last=False)[1].nbytes
    return data

  def clear_cache(self) -> None:
    self._cache.clear()

  def read(self, name: str, rows: slice, cols: slice | None = None) -> np.ndarray:
    gname = self._hf_to_gguf[name]
    t = self._tensors[gname]
    one_d = len(t.dims) == 1
    n_rows = t.dims[0] if one_d else t.rows
    start, stop, _ = rows.indices(n_rows)
    heads = self._permuted_heads(gname)
    if heads is not None:  # read whole heads, un-permute them, then cut the rows asked for.
      per = n_rows // heads
      lo, hi = (start // per) * per, -(-stop // per) * per
    else:
      lo, hi = start, stop
    if one_d:  # a vector is one stored row: treat its entries as rows of width 1.
      data = self._dequantize(t, 0, 1).reshape(-1, 1)[lo:hi]
    else:
      data = self._dequantize(t, lo, hi)
    if heads is not None:
      # llama.cpp: w.reshape(heads, 2, per/2, in).swapaxes(1, 2); undo it.
      block = data.reshape(((hi - lo) // per, per // 2, 2) + data.shape[1:])
      data = block.swapaxes(1, 2).reshape(data.shape)
    data = data[start - lo:stop - lo]
    if one_d:
      data = data.reshape(-1)
    if self.family == "gemma3" and gname.endswith("norm.weight"):
      data = data - 1.0
    if cols is not None:
      data = data[:, cols]
    return data

  # ---- tokenizer metadata ----
  def tokenizer_metadata(self) -> dict:
    """The `tokenizer.*` fields (`tokenizer.ggml.tokens`, ... , `tokenizer.chat_template`)."""
    return {k: self.get(k) for k in self.file.fields if k.startswith("tokenizer.")}

  def tokenizer(self):
    from rest_jax import tokenizers
    try:
      return tokenizers.from_gguf_metadata(self.tokenizer_metadata(), self.path)
    except tokenizers.TokenizerError as e:
      raise WeightsError(str(e)) from e
