"""Hugging Face model directories: `config.json` + `*.safetensors` (single, sharded, indexed).

`HFDirectory(path)` parses `config.json` into a `ModelConfig` (Llama, Qwen2, Qwen3, Gemma 3 text; the
legacy `rope_theta`/`rope_scaling` keys and transformers 5's `rope_parameters` both) and is a
`TensorSource` over the safetensors files, memory-mapped: a shard reads only its rows and
columns. Names are the checkpoint's own (`model.layers.0.self_attn.q_proj.weight`); a Gemma 3
multimodal checkpoint's text tower (`model.language_model.*`) is found by its prefix. Hugging
Face checkpoints already use the half-split RoPE layout rest_jax uses, so no permutation is
needed; fused `qkv_proj` / `gate_up_proj` tensors are read by row ranges.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import numpy as np

from rest_jax.models.config import ModelConfig, RopeScaling
from rest_jax.models.safetensors_io import SafetensorsFile
from rest_jax.models.weights import WeightsError

log = logging.getLogger(__name__)

MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
               "gemma3_text": "gemma3", "gemma3": "gemma3"}


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise WeightsError(f"{path}: cannot read: {e}") from e
  except json.JSONDecodeError as e:
    raise WeightsError(f"{path}: not valid JSON: {e}") from e


def _rope(c: dict, key: str | None = None) -> tuple[float | None, RopeScaling | None]:
  """(theta, scaling) from legacy keys or transformers 5 `rope_parameters`."""
  params = c.get("rope_parameters")
  if isinstance(params, dict) and key is not None and key in params:
    params = params[key]
  scaling = c.get("rope_scaling") if key in (None, "full_attention") else None
  theta = None
  if isinstance(params, dict) and ("rope_type" in params or "rope_theta" in params):
    theta = params.get("rope_theta")
    if params.get("rope_type", "default") != "default":
      scaling = params
  if scaling and isinstance(scaling, dict):
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
      scaling = None
    elif kind == "linear":
      scaling = RopeScaling("linear", float(scaling["factor"]))
    elif kind == "llama3":
      scaling = RopeScaling("llama3", float(scaling["factor"]),
                            float(scaling.get("low_freq_factor", 1.0)),
                            float(scaling.get("high_freq_factor", 4.0)),
                            int(scaling.get("original_max_position_embeddings", 8192)))
    else:
      raise WeightsError(f"RoPE scaling {kind!r} is not supported")
  else:
    scaling = None
  return theta, scaling


def config_from_hf(c: dict, origin: str) -> ModelConfig:
  """A ModelConfig from a transformers `config.json` dict."""
  if c.get("model_type") == "gemma3" and "text_config" in c:
    c = {**c["text_config"], "model_type": "gemma3_text"}
  model_type = c.get("model_type")
  if model_type not in MODEL_TYPES:
    raise WeightsError(f"{origin}: model_type {model_type!r} is not supported; supported: "
                       f"{sorted(MODEL_TYPES)}")
  family = MODEL_TYPES[model_type]
  try:
    d, n = int(c["hidden_size"]), int(c["num_attention_heads"])
    kw = dict(
        family=family, vocab_size=int(c["vocab_size"]), num_layers=int(c["num_hidden_layers"]),
        embed_dim=d, num_heads=n, num_kv_heads=int(c.get("num_key_value_heads") or n),
        head_dim=int(c.get("head_dim") or d // n), mlp_dim=int(c["intermediate_size"]),
        max_seq_len=int(c.get("max_position_embeddings", 2048)),
        norm_eps=float(c.get("rms_norm_eps", 1e-6)))
  except KeyError as e:
    raise WeightsError(f"{origin}: config lacks {e.args[0]!r}") from e
  with _origin(origin):
    if family == "gemma3":
      theta, scaling = _rope(c, "full_attention")
      local_theta, _ = _rope(c, "sliding_attention")
      layer_types = c.get("layer_types")
      if layer_types:
        local = tuple(t == "sliding_attention" for t in layer_types)
      else:
        pattern = int(c.get("sliding_window_pattern", 6))
        local = tuple((i + 1) % pattern != 0 for i in range(kw["num_layers"]))
      if c.get("attn_logit_softcapping"):
        raise WeightsError(f"{origin}: attention logit soft-capping is not supported")
      if c.get("use_bidirectional_attention"):
        raise WeightsError(f"{origin}: bidirectional attention is not supported")
      kw.update(
          rope_theta=float(theta or c.get("rope_theta", 1_000_000.0)), rope_scaling=scaling,
          rope_local_theta=float(local_theta or c.get("rope_local_base_freq", 10_000.0)),
          norm_scale_offset=1.0, activation="gelu_tanh", qk_norm=True, post_norms=True,
          scale_embeddings=True, tie_embeddings=bool(c.get("tie_word_embeddings", True)),
          query_scale=float(c.get("query_pre_attn_scalar", 256)),
          sliding_window=int(c.get("sliding_window") or 4096), local_layers=local,
          final_logit_softcap=c.get("final_logit_softcapping"))
      if c.get("hidden_activation", c.get("hidden_act", "gelu_pytorch_tanh")) not in (
          "gelu_pytorch_tanh", "gelu_tanh"):
        raise WeightsError(f"{origin}: activation {c.get('hidden_activation')!r} is not supported")
    else:
      theta, scaling = _rope(c)
      kw.update(rope_theta=float(theta or c.get("rope_theta", 10_000.0)), rope_scaling=scaling,
                tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                qkv_bias=family == "qwen2", qk_norm=family == "qwen3")
      if c.get("hidden_act", "silu") != "silu":
        raise WeightsError(f"{origin}: activation {c.get('hidden_act')!r} is not supported")
      if family == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
        raise WeightsError(f"{origin}: attention_bias/mlp_bias Llama variants are not supported")
      if family in ("qwen2", "qwen3") and c.get("use_sliding_window"):
        raise WeightsError(f"{origin}: Qwen sliding-window attention is not supported")
      if family == "qwen3" and c.get("attention_bias"):
        raise WeightsError(f"{origin}: attention_bias Qwen3 variants are not supported")
      if model_type == "mistral" and c.get("sliding_window"):
        raise WeightsError(f"{origin}: Mistral sliding-window attention is not supported")
  try:
    return ModelConfig(**kw)
  except ValueError as e:
    raise WeightsError(f"{origin}: inconsistent config: {e}") from e


class _origin:
  """Adds the config file to WeightsErrors raised inside (e.g. from `_rope`)."""

  def __init__(self, origin):
    self.origin = origin

  def __enter__(self):
    return self

  def __exit__(self, typ, exc, tb):
    if isinstance(exc, WeightsError) and not str(exc).startswith(self.origin):
      raise WeightsError(f"{self.origin}: {exc}") from exc
    return False


class HFDirectory:
  """A Hugging Face model directory as a config + `TensorSource`."""

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    self.description = self.path
    self.config_path = os.path.join(self.path, "config.json")
    if not os.path.exists(self.config_path):
      raise WeightsError(f"{self.path}: no config.json (not a Hugging Face model directory)")
    self.hf_config = read_json(self.config_path)
    index_path = os.path.join(self.path, "model.safetensors.index.json")
    if os.path.exists(index_path):
      weight_map = read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict):
        raise WeightsError(f"{index_path}: no weight_map")
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(self.path, "*.safetensors")))
      weight_map = None
    if not files:
      raise WeightsError(f"{self.path}: no *.safetensors files")
    self.files: dict[str, SafetensorsFile] = {}
    for name in files:
      full = os.path.join(self.path, name)
      if not os.path.exists(full):
        raise WeightsError(f"{index_path}: lists {name}, which does not exist")
      self.files[name] = SafetensorsFile(full)
    self._where: dict[str, SafetensorsFile] = {}
    for f in self.files.values():
      for key in f.keys():
        self._where[key] = f
    if weight_map:
      for key, fname in weight_map.items():
        if key not in self._where:
          raise WeightsError(f"{os.path.join(self.path, fname)}: lacks tensor {key!r} that "
                             f"{index_path} places there")
    self.prefix = self._find_prefix()
    self.lm_head = next((n for n in ("lm_head.weight", "language_model.lm_head.weight")
                         if n in self._where), "lm_head.weight")
    self._cfg: ModelConfig | None = None

  def _find_prefix(self) -> str:
    for candidate in ("model.", "model.language_model.", "language_model.model.", ""):
      if candidate + "embed_tokens.weight" in self._where:
        return candidate
    raise WeightsError(f"{self.path}: no embed_tokens.weight tensor in the safetensors files")

  def config(self) -> ModelConfig:
    if self._cfg is None:
      self._cfg = config_from_hf(self.hf_config, self.config_path)
    return self._cfg

  def tokenizer(self):
    from rest_jax import tokenizers
    try:
      return tokenizers.load_tokenizer(self.path)
    except tokenizers.TokenizerError as e:
      raise WeightsError(str(e)) from e

  # ---- TensorSource ----
  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def file_of(self, name: str) -> str:
    return self._where[name].path

  def read(self, name: str, rows: slice, cols: slice | None = None) -> np.ndarray:
    arr = self._where[name].array(name)
    part = arr[rows] if cols is None else arr[rows, cols]
    return np.asarray(part, dtype=np.float32)
