"""One config dataclass for the Llama, Qwen2, Qwen3 and Gemma 3 families, and the named presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

Family = Literal["llama", "qwen2", "qwen3", "gemma3"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling: 'linear' (position interpolation) or 'llama3' (Llama 3.1)."""

  kind: Literal["linear", "llama3"] = "linear"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer; every family is a setting of these."""

  family: Family
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int = 2048
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  # Gemma 3: local (sliding-window) layers use their own RoPE base and no scaling.
  rope_local_theta: float | None = None
  norm_eps: float = 1e-6
  # Gemma stores RMSNorm scales as w and applies (1 + w).
  norm_scale_offset: float = 0.0
  activation: Literal["silu", "gelu_tanh"] = "silu"
  tie_embeddings: bool = True
  qkv_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  scale_embeddings: bool = False
  # Attention logits are scaled by query_scale**-0.5 (default head_dim).
  query_scale: float | None = None
  sliding_window: int | None = None
  # Per layer: True for sliding-window attention, False for global. None: all global.
  local_layers: tuple[bool, ...] | None = None
  final_logit_softcap: float | None = None
  dtype: str = "float32"        # activations / compute (bfloat16: mixed precision)
  param_dtype: str = "float32"  # stored parameters (float32 master weights by default)
  # Self-attention kernel: 'auto' (splash on TPU, cuDNN on GPU, XLA elsewhere), 'xla',
  # 'splash' or 'cudnn'; see models/attention.py.
  attention: str = "auto"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.local_layers is not None and len(self.local_layers) != self.num_layers:
      raise ValueError(f"local_layers has {len(self.local_layers)} entries, "
                       f"num_layers={self.num_layers}")
    if self.attention not in ("auto", "xla", "splash", "cudnn"):
      raise ValueError(f"attention must be 'auto', 'xla', 'splash' or 'cudnn', got "
                       f"{self.attention!r}")
    if self.local_layers is not None and any(self.local_layers) and not self.sliding_window:
      raise ValueError("local_layers marks sliding-window layers but sliding_window is unset")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @property
  def attn_scale(self) -> float:
    return (self.query_scale or self.head_dim) ** -0.5

  def layer_windows(self) -> np.ndarray:
    """[num_layers] int32: the attention window of each layer, 0 for global."""
    local = self.local_layers or (False,) * self.num_layers
    return np.asarray([self.sliding_window if l else 0 for l in local], np.int32)

  def layer_inv_freq(self) -> np.ndarray:
    """[num_layers, head_dim // 2] float32 RoPE inverse frequencies of each layer."""
    local = self.local_layers or (False,) * self.num_layers
    glob = rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
    loc = rope_inv_freq(self.head_dim, self.rope_local_theta or self.rope_theta, None)
    return np.stack([loc if l else glob for l in local]).astype(np.float32)

  def num_params(self) -> int:
    d, h, kv, hd, m = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    attn = d * hd * (h + 2 * kv) + h * hd * d + (hd * (h + 2 * kv) if self.qkv_bias else 0)
    norms = d * (4 if self.post_norms else 2) + (2 * hd if self.qk_norm else 0)
    layer = attn + 3 * d * m + norms
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + embed + d


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    return inv
  if scaling.kind == "linear":
    return inv / scaling.factor
  if scaling.kind == "llama3":
    # Llama 3.1: long wavelengths are interpolated, short ones kept, the band between blended.
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * inv / scaling.factor + smooth * inv
    out = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return np.where(mid, blended, out)
  raise ValueError(f"unknown rope scaling kind {scaling.kind!r}; expected 'linear' or 'llama3'")


def gemma3_local_layers(num_layers: int, pattern: int = 6) -> tuple[bool, ...]:
  """Gemma 3: five sliding-window layers, then one global, repeating."""
  return tuple((i + 1) % pattern != 0 for i in range(num_layers))


PRESETS: dict[str, ModelConfig] = {
    # A few million parameters over the byte vocabulary: trains in seconds on a CPU.
    "tiny": ModelConfig(
        family="llama", vocab_size=384, num_layers=4, embed_dim=256, num_heads=8,
        num_kv_heads=4, head_dim=32, mlp_dim=768, max_seq_len=512, norm_eps=1e-6),
    # A quarter of tiny's width (0.9M parameters): the embedded demo's model, whose base SFT,
    # three ReST-EM iterations and their evaluations fit in five minutes on 2 CPU cores.
    "nano": ModelConfig(
        family="llama", vocab_size=384, num_layers=4, embed_dim=128, num_heads=4,
        num_kv_heads=2, head_dim=32, mlp_dim=384, max_seq_len=512, norm_eps=1e-6),
    "smollm2-135m": ModelConfig(
        family="llama", vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9,
        num_kv_heads=3, head_dim=64, mlp_dim=1536, max_seq_len=8192, rope_theta=100_000.0,
        norm_eps=1e-5, tie_embeddings=True),
    "gemma3-270m": ModelConfig(
        family="gemma3", vocab_size=262144, num_layers=18, embed_dim=640, num_heads=4,
        num_kv_heads=1, head_dim=256, mlp_dim=2048, max_seq_len=32768,
        rope_theta=1_000_000.0, rope_local_theta=10_000.0, norm_eps=1e-6,
        norm_scale_offset=1.0, activation="gelu_tanh", tie_embeddings=True, qk_norm=True,
        post_norms=True, scale_embeddings=True, query_scale=256, sliding_window=512,
        local_layers=gemma3_local_layers(18)),
    "gemma3-1b": ModelConfig(
        family="gemma3", vocab_size=262144, num_layers=26, embed_dim=1152, num_heads=4,
        num_kv_heads=1, head_dim=256, mlp_dim=6912, max_seq_len=32768,
        rope_theta=1_000_000.0, rope_local_theta=10_000.0, norm_eps=1e-6,
        norm_scale_offset=1.0, activation="gelu_tanh", tie_embeddings=True, qk_norm=True,
        post_norms=True, scale_embeddings=True, query_scale=256, sliding_window=512,
        local_layers=gemma3_local_layers(26)),
    "llama3-8b": ModelConfig(
        family="llama", vocab_size=128256, num_layers=32, embed_dim=4096, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=14336, max_seq_len=131072,
        rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)),
    # Llama 3.2: Llama 3.1's RoPE scaling (factor 32), tied embeddings.
    "llama3.2-1b": ModelConfig(
        family="llama", vocab_size=128256, num_layers=16, embed_dim=2048, num_heads=32,
        num_kv_heads=8, head_dim=64, mlp_dim=8192, max_seq_len=131072, rope_theta=500_000.0,
        norm_eps=1e-5, tie_embeddings=True,
        rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)),
    "llama3.2-3b": ModelConfig(
        family="llama", vocab_size=128256, num_layers=28, embed_dim=3072, num_heads=24,
        num_kv_heads=8, head_dim=128, mlp_dim=8192, max_seq_len=131072, rope_theta=500_000.0,
        norm_eps=1e-5, tie_embeddings=True,
        rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)),
    # Qwen3 dense: RMSNorm on each head's queries and keys, head_dim 128 whatever the width.
    "qwen3-0.6b": ModelConfig(
        family="qwen3", vocab_size=151936, num_layers=28, embed_dim=1024, num_heads=16,
        num_kv_heads=8, head_dim=128, mlp_dim=3072, max_seq_len=40960, rope_theta=1_000_000.0,
        tie_embeddings=True, qk_norm=True),
    "qwen3-1.7b": ModelConfig(
        family="qwen3", vocab_size=151936, num_layers=28, embed_dim=2048, num_heads=16,
        num_kv_heads=8, head_dim=128, mlp_dim=6144, max_seq_len=40960, rope_theta=1_000_000.0,
        tie_embeddings=True, qk_norm=True),
    "qwen3-4b": ModelConfig(
        family="qwen3", vocab_size=151936, num_layers=36, embed_dim=2560, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=9728, max_seq_len=40960, rope_theta=1_000_000.0,
        tie_embeddings=True, qk_norm=True),
    "qwen3-8b": ModelConfig(
        family="qwen3", vocab_size=151936, num_layers=36, embed_dim=4096, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=12288, max_seq_len=40960, rope_theta=1_000_000.0,
        tie_embeddings=False, qk_norm=True),
    "qwen2.5-0.5b": ModelConfig(
        family="qwen2", vocab_size=151936, num_layers=24, embed_dim=896, num_heads=14,
        num_kv_heads=2, head_dim=64, mlp_dim=4864, max_seq_len=32768, rope_theta=1_000_000.0,
        tie_embeddings=True, qkv_bias=True),
    "qwen2.5-1.5b": ModelConfig(
        family="qwen2", vocab_size=151936, num_layers=28, embed_dim=1536, num_heads=12,
        num_kv_heads=2, head_dim=128, mlp_dim=8960, max_seq_len=32768, rope_theta=1_000_000.0,
        tie_embeddings=True, qkv_bias=True),
    "qwen2.5-7b": ModelConfig(
        family="qwen2", vocab_size=152064, num_layers=28, embed_dim=3584, num_heads=28,
        num_kv_heads=4, head_dim=128, mlp_dim=18944, max_seq_len=32768, rope_theta=1_000_000.0,
        tie_embeddings=False, qkv_bias=True),
}
