"""GGUF files (llama.cpp): the model config from metadata, tensors dequantised on demand.

`GGUFModel(path)` parses the header and metadata (`tokenizers.gguf_file.GGUFFile`) and
memory-maps the tensor data; `config()` builds the `ModelConfig` from the metadata (architecture -> family:
`llama`, `qwen2`, `qwen3`, `gemma3`), `tokenizer()` the tokenizer, and the model itself is a
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

import numpy as np

from rest_jax.models.config import ModelConfig, RopeScaling, gemma3_local_layers, rope_inv_freq
from rest_jax.models.weights import WeightsError
from rest_jax.tokenizers.gguf_file import GGUFFile, GGUFFormatError, GGUFTensorInfo

log = logging.getLogger(__name__)

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}

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


def _f32(x) -> float:
  """The shortest decimal of a float32 metadata value (1e-05, not 9.999999747378752e-06)."""
  return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


class GGUFModel:
  """One GGUF file: its metadata, and its tensors as a `TensorSource` (Hugging Face names)."""

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    self.description = self.path
    try:
      self.file = GGUFFile(self.path)
    except GGUFFormatError as e:
      raise WeightsError(str(e)) from e
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
        qk_norm="blk.0.attn_q_norm.weight" in self._tensors,
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
    return self.file.tokenizer_metadata()

  def tokenizer(self):
    from rest_jax import tokenizers
    try:
      return tokenizers.from_gguf_metadata(self.tokenizer_metadata(), self.path)
    except tokenizers.TokenizerError as e:
      raise WeightsError(str(e)) from e
