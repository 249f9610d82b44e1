"""Pretrained weights: Hugging Face names and layouts, and streaming them onto a mesh.

Every importer (Hugging Face safetensors, GGUF) presents its tensors as a `TensorSource`: tensors
under their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`) in Hugging Face's
layout (torch `[out, in]`, half-split RoPE rows), readable by row and column ranges. This module
owns the one table from those names to rest_jax's parameter paths and layouts, checks the
shapes against a `ModelConfig`, and builds the sharded `nnx.State`.

Streaming (`stream_params`): each parameter becomes a `jax.Array` through
`jax.make_array_from_callback`, whose callback is asked for one device's shard at a time and
reads only the rows and columns of that shard from the source (stacked `[layers, ...]`
parameters: one layer's slice at a time). Safetensors are memory-mapped, so a shard touches
only its own bytes; GGUF matrices are dequantised by whole rows (quantisation blocks run along
rows), only the rows the shard needs, with a small cache so column shards of the same rows
dequantise them once. Peak host memory is therefore bounded by one parameter, not the model:
the distinct shards of the parameter being built that this host's devices hold (with every
dimension sharded, 1/num_devices of it), plus for GGUF the cache of dequantised rows (at most
1 GiB, or one tensor if larger). On a multi-host mesh each host reads only its own shards.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Protocol, Sequence

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from rest_jax.models import params as params_lib
from rest_jax.models.config import ModelConfig

log = logging.getLogger(__name__)


class WeightsError(ValueError):
  """A weights, config or tokenizer file that cannot be used; the message names the file."""


class TensorSource(Protocol):
  """Tensors under Hugging Face names, in Hugging Face layout, read by slices."""

  description: str  # for messages: the file or directory

  def names(self) -> set[str]: ...

  def shape(self, name: str) -> tuple[int, ...]: ...

  def file_of(self, name: str) -> str: ...

  def read(self, name: str, rows: slice, cols: slice | None = None) -> np.ndarray:
    """float32 `tensor[rows]` (1-D) or `tensor[rows, cols]` (2-D), slices with steps of 1."""
    ...


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """How one rest_jax parameter is stored in Hugging Face format.

  kind: `same` (identical layout), `T` (ours is the transpose), `heads_in` (HF `[N*H, D]`,
  ours `[D, N, H]`), `heads_out` (HF `[D, N*H]`, ours `[N, H, D]`), `heads_bias` (HF `[N*H]`,
  ours `[N, H]`). `hf` holds `{i}` for the layer index of stacked parameters.
  `fused`: the HF name and row offset of the same rows inside a fused projection
  (`qkv_proj`, `gate_up_proj`), tried when the unfused name is absent.
  """

  hf: str
  kind: str
  hf_shape: tuple[int, ...]
  heads: int = 0
  fused: tuple[str, int, int] | None = None  # (name, row offset, fused rows)

  def name(self, layer: int | None) -> str:
    return self.hf.format(i=layer)


def tensor_specs(cfg: ModelConfig, prefix: str = "model.",
                 lm_head: str = "lm_head.weight") -> dict[str, TensorSpec]:
  """rest_jax parameter path (`layers/attn/q`) -> its Hugging Face tensor, for `cfg`."""
  d, n, k, h, m, v = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      cfg.mlp_dim, cfg.vocab_size)
  lp = prefix + "layers.{i}."
  qkv = (lp + "self_attn.qkv_proj.weight", (n + 2 * k) * h)
  qkv_b = (lp + "self_attn.qkv_proj.bias", (n + 2 * k) * h)
  gate_up = (lp + "mlp.gate_up_proj.weight", 2 * m)
  specs = {
      "embed": TensorSpec(prefix + "embed_tokens.weight", "same", (v, d)),
      "final_norm/scale": TensorSpec(prefix + "norm.weight", "same", (d,)),
      "layers/attn_norm/scale": TensorSpec(lp + "input_layernorm.weight", "same", (d,)),
      "layers/attn/q": TensorSpec(lp + "self_attn.q_proj.weight", "heads_in", (n * h, d), n,
                                  (qkv[0], 0, qkv[1])),
      "layers/attn/k": TensorSpec(lp + "self_attn.k_proj.weight", "heads_in", (k * h, d), k,
                                  (qkv[0], n * h, qkv[1])),
      "layers/attn/v": TensorSpec(lp + "self_attn.v_proj.weight", "heads_in", (k * h, d), k,
                                  (qkv[0], (n + k) * h, qkv[1])),
      "layers/attn/o": TensorSpec(lp + "self_attn.o_proj.weight", "heads_out", (d, n * h), n),
      "layers/mlp/gate": TensorSpec(lp + "mlp.gate_proj.weight", "T", (m, d), 0,
                                    (gate_up[0], 0, gate_up[1])),
      "layers/mlp/up": TensorSpec(lp + "mlp.up_proj.weight", "T", (m, d), 0,
                                  (gate_up[0], m, gate_up[1])),
      "layers/mlp/down": TensorSpec(lp + "mlp.down_proj.weight", "T", (d, m)),
  }
  if cfg.post_norms:  # Gemma: four norms per layer, named differently.
    specs["layers/mlp_norm/scale"] = TensorSpec(lp + "pre_feedforward_layernorm.weight", "same",
                                                (d,))
    specs["layers/attn_post_norm/scale"] = TensorSpec(
        lp + "post_attention_layernorm.weight", "same", (d,))
    specs["layers/mlp_post_norm/scale"] = TensorSpec(
        lp + "post_feedforward_layernorm.weight", "same", (d,))
  else:
    specs["layers/mlp_norm/scale"] = TensorSpec(lp + "post_attention_layernorm.weight", "same",
                                                (d,))
  if cfg.qkv_bias:
    specs["layers/attn/q_bias"] = TensorSpec(lp + "self_attn.q_proj.bias", "heads_bias", (n * h,),
                                             n, (qkv_b[0], 0, qkv_b[1]))
    specs["layers/attn/k_bias"] = TensorSpec(lp + "self_attn.k_proj.bias", "heads_bias", (k * h,),
                                             k, (qkv_b[0], n * h, qkv_b[1]))
    specs["layers/attn/v_bias"] = TensorSpec(lp + "self_attn.v_proj.bias", "heads_bias", (k * h,),
                                             k, (qkv_b[0], (n + k) * h, qkv_b[1]))
  if cfg.qk_norm:
    specs["layers/attn/q_norm/scale"] = TensorSpec(lp + "self_attn.q_norm.weight", "same", (h,))
    specs["layers/attn/k_norm/scale"] = TensorSpec(lp + "self_attn.k_norm.weight", "same", (h,))
  if not cfg.tie_embeddings:
    specs["lm_head"] = TensorSpec(lm_head, "T", (v, d))
  return specs


def param_path(path) -> str:
  """`layers/attn/q` for a tree path into an `nnx.State` (the `value` leaf dropped)."""
  keys = []
  for entry in path:
    key = getattr(entry, "key", getattr(entry, "name", entry))
    keys.append(str(key))
  return "/".join(keys)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def _norm(s: slice, dim: int) -> slice:
  start, stop, step = s.indices(dim)
  if step != 1:
    raise ValueError(f"strided shard index {s} is not supported")
  return slice(start, stop)


def _sub(s: slice, offset: int) -> slice:
  return slice(s.start + offset, s.stop + offset)


class _Resolved:
  """Where a spec's tensor lives in a source: its name and the row offset inside it."""

  def __init__(self, spec: TensorSpec, layer: int | None, source: TensorSource):
    name = spec.name(layer)
    self.offset = 0
    if name in source.names() or spec.fused is None:
      self.name = name
    else:
      fused_name, offset, _ = spec.fused
      self.name, self.offset = fused_name.format(i=layer), offset

  def read(self, source: TensorSource, rows: slice, cols: slice | None):
    return source.read(self.name, _sub(rows, self.offset), cols)


def read_param_slice(spec: TensorSpec, source: TensorSource, layer: int | None,
                     index: Sequence[slice], head_dim: int) -> np.ndarray:
  """The slice `index` of one rest_jax parameter (one layer of a stacked one), float32."""
  r = _Resolved(spec, layer, source)
  kind = spec.kind
  if kind == "same":
    return r.read(source, index[0], index[1] if len(index) > 1 else None)
  if kind == "T":
    return r.read(source, index[1], index[0]).T
  h = head_dim
  if kind == "heads_in":  # ours [D, N, H] <- HF [N*H, D]
    dsl, nsl, hsl = index
    block = r.read(source, slice(nsl.start * h, nsl.stop * h), dsl)
    block = block.reshape(nsl.stop - nsl.start, h, -1)[:, hsl]
    return block.transpose(2, 0, 1)
  if kind == "heads_out":  # ours [N, H, D] <- HF [D, N*H]
    nsl, hsl, dsl = index
    block = r.read(source, dsl, slice(nsl.start * h, nsl.stop * h))
    block = block.reshape(-1, nsl.stop - nsl.start, h)[:, :, hsl]
    return block.transpose(1, 2, 0)
  if kind == "heads_bias":  # ours [N, H] <- HF [N*H]
    nsl, hsl = index
    block = r.read(source, slice(nsl.start * h, nsl.stop * h), None)
    return block.reshape(nsl.stop - nsl.start, h)[:, hsl]
  raise ValueError(f"unknown tensor kind {kind!r}")


def check_source(cfg: ModelConfig, source: TensorSource, specs: dict[str, TensorSpec],
                 config_origin: str) -> None:
  """Every tensor the config needs is present with the shape it implies, else WeightsError."""
  names = source.names()
  used = set()
  for path, spec in specs.items():
    layers = range(cfg.num_layers) if path.startswith("layers/") else [None]
    for layer in layers:
      name = spec.name(layer)
      expected = spec.hf_shape
      if name not in names and spec.fused is not None and spec.fused[0].format(i=layer) in names:
        name = spec.fused[0].format(i=layer)
        expected = (spec.fused[2],) + spec.hf_shape[1:]
      if name not in names:
        hint = ""
        if path == "lm_head":
          hint = " (the config says the output head is not tied to the embedding)"
        raise WeightsError(f"{source.description}: tensor {name!r} is missing{hint}; "
                           f"the model needs it (config from {config_origin})")
      used.add(name)
      found = tuple(source.shape(name))
      if found != tuple(expected):
        raise WeightsError(
            f"{source.file_of(name)}: tensor {name!r} has shape {found}, but the config "
            f"({config_origin}) implies {tuple(expected)}")
  unused = sorted(n for n in names - used if not n.endswith("rotary_emb.inv_freq"))
  if unused:
    log.warning("%s: %d tensors are not used by the %s model, e.g. %s", source.description,
                len(unused), cfg.family, unused[:5])


def host_dtype(dtype) -> np.dtype:
  name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def stream_params(cfg: ModelConfig, mesh, source: TensorSource, *, config_origin: str,
                  prefix: str = "model.", lm_head: str = "lm_head.weight", remat: bool = False,
                  on_read: Callable[[str, tuple], None] | None = None):
  """(graphdef, params): the model of `cfg` with `source`'s weights, sharded on `mesh`.

  See the module docstring for the memory bound. `on_read(path, index)` is called for every
  shard the callback is asked for (tests use it to check that no device reads more than its
  shard).
  """
  specs = tensor_specs(cfg, prefix, lm_head)
  check_source(cfg, source, specs, config_origin)
  graphdef, abstract = params_lib.abstract_params(cfg, remat)
  shardings = params_lib.shardings(mesh, abstract)
  dtype = host_dtype(cfg.param_dtype)

  def build(path, var, sharded_var):
    p = param_path(path)
    if p not in specs:
      raise WeightsError(f"{source.description}: no Hugging Face tensor is known for parameter "
                         f"{p!r} of the {cfg.family} model")
    spec = specs[p]
    shape = var.get_value().shape
    stacked = p.startswith("layers/")
    cache: dict[tuple, np.ndarray] = {}

    def callback(index):
      index = tuple(_norm(s, dim) for s, dim in zip(index, shape))
      key = tuple((s.start, s.stop) for s in index)
      if key not in cache:
        if on_read is not None:
          on_read(p, key)
        if stacked:
          parts = [read_param_slice(spec, source, layer, index[1:], cfg.head_dim)
                   for layer in range(index[0].start, index[0].stop)]
          out = np.stack(parts)
        else:
          out = read_param_slice(spec, source, None, index, cfg.head_dim)
        cache[key] = np.ascontiguousarray(out, dtype=dtype)
      return cache[key]

    array = jax.make_array_from_callback(shape, sharded_var.get_value(), callback)
    cache.clear()
    if hasattr(source, "clear_cache"):
      source.clear_cache()
    return var.replace(array)

  params = jax.tree_util.tree_map_with_path(build, abstract, shardings, is_leaf=_is_var)
  return graphdef, params


def export_tensors(cfg: ModelConfig, params, prefix: str = "model."):
  """(HF name, HF shape, produce) for every tensor of `params`, one layer at a time.

  `produce()` gathers one layer of one parameter to the host (never the model) and returns it
  in Hugging Face layout as float32.
  """
  specs = tensor_specs(cfg, prefix)
  flat = {}
  for path, var in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_var)[0]:
    flat[param_path(path)] = var.get_value() if _is_var(var) else var
  flat = {k[:-len("/value")] if k.endswith("/value") else k: v for k, v in flat.items()}
  missing = set(specs) - set(flat)
  if missing:
    raise WeightsError(f"params lack {sorted(missing)} that a {cfg.family} model needs")
  out = []
  for p, spec in specs.items():
    array = flat[p]
    layers = range(cfg.num_layers) if p.startswith("layers/") else [None]
    for layer in layers:
      def produce(array=array, layer=layer, spec=spec):
        x = np.asarray(jax.device_get(array if layer is None else array[layer]), np.float32)
        return to_hf_layout(spec, x)
      out.append((spec.name(layer), spec.hf_shape, produce))
  return out


def to_hf_layout(spec: TensorSpec, x: np.ndarray) -> np.ndarray:
  """The inverse of `read_param_slice` for a whole tensor."""
  if spec.kind == "same":
    return x
  if spec.kind == "T":
    return x.T
  if spec.kind == "heads_in":
    return x.reshape(x.shape[0], -1).T
  if spec.kind == "heads_out":
    return x.reshape(-1, x.shape[-1]).T
  if spec.kind == "heads_bias":
    return x.reshape(-1)
  raise ValueError(f"unknown tensor kind {spec.kind!r}")


def check_vocab(cfg: ModelConfig, tokenizer, origin: str) -> None:
  """A tokenizer whose ids run past the embedding table cannot drive the model."""
  size = getattr(tokenizer, "vocab_size", None)
  if size is not None and size > cfg.vocab_size:
    raise WeightsError(f"{origin}: the tokenizer has {size} tokens but the model's embedding "
                       f"has vocab_size={cfg.vocab_size}")

