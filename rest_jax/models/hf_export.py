"""Export to a Hugging Face directory that `transformers` loads as is.

`export_hf(model, out_dir)` writes `config.json` (LlamaForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM or Gemma3ForCausalLM), `generation_config.json`, `model.safetensors` and the tokenizer's files.
Tensors are gathered to the host one layer of one parameter at a time and streamed into the
file, so exporting never holds the model on the host. Tied models write no `lm_head.weight`
(transformers ties it), so loading reports no missing or unexpected weights.

The exported config must map back to the very same `ModelConfig` (`hf_import.config_from_hf`);
a config transformers cannot express (e.g. QK-norm on a Llama) is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

from rest_jax.models import safetensors_io
from rest_jax.runtime import storage
from rest_jax.models.config import ModelConfig
from rest_jax.models.hf_import import config_from_hf
from rest_jax.models.weights import WeightsError, export_tensors, host_dtype

log = logging.getLogger(__name__)

_SPM_CLASS = {"llama": "LlamaTokenizer", "qwen2": None, "qwen3": None,
              "gemma3": "GemmaTokenizer"}
_ARCH = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
         "qwen3": ("Qwen3ForCausalLM", "qwen3"), "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}


def _rope_scaling_dict(cfg: ModelConfig):
  s = cfg.rope_scaling
  if s is None:
    return None
  if s.kind == "linear":
    return {"rope_type": "linear", "factor": s.factor}
  return {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
          "high_freq_factor": s.high_freq_factor,
          "original_max_position_embeddings": s.original_max_position}


def hf_config(cfg: ModelConfig, tokenizer=None, dtype: str = "float32") -> dict:
  """The transformers `config.json` dict of `cfg`."""
  arch, model_type = _ARCH[cfg.family]
  c = {
      "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta, "rope_scaling": _rope_scaling_dict(cfg),
      "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": dtype,
      "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
  }
  if cfg.family == "gemma3":
    scalar = cfg.query_scale or cfg.head_dim
    c.update(hidden_activation="gelu_pytorch_tanh", sliding_window=cfg.sliding_window,
             # transformers' config is strictly typed: an int where the value is integral.
             query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
             layer_types=["sliding_attention" if l else "full_attention"
                          for l in (cfg.local_layers or (False,) * cfg.num_layers)],
             rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta,
             final_logit_softcapping=cfg.final_logit_softcap, attn_logit_softcapping=None,
             attention_bias=False)
  else:
    c.update(hidden_act="silu")
    if cfg.family == "llama":
      c.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
      c.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
      if cfg.family == "qwen3":
        c.update(attention_bias=False)
  if tokenizer is not None:
    for key, attr in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_id"),
                      ("pad_token_id", "pad_id")):
      value = getattr(tokenizer, attr, None)
      if value is not None:
        c[key] = int(value)
  # Refuse what transformers cannot express: the config must map back to `cfg` exactly.
  back = config_from_hf(c, "exported config.json")
  ignore = {"dtype", "param_dtype"}
  diff = {f.name: (getattr(cfg, f.name), getattr(back, f.name))
          for f in dataclasses.fields(cfg)
          if f.name not in ignore and getattr(cfg, f.name) != getattr(back, f.name)}
  if diff:
    raise WeightsError(f"a {cfg.family} model with these settings has no transformers "
                       f"equivalent: {diff} (ours, as exported)")
  return c


def _generation_config(tokenizer) -> dict:
  out = {"_from_model_config": False}
  if tokenizer is None:
    return out
  bos = getattr(tokenizer, "bos_token_id", getattr(tokenizer, "bos_id", None))
  if bos is not None:
    out["bos_token_id"] = int(bos)
  stops = list(getattr(tokenizer, "stop_ids", (tokenizer.eos_id,)))
  out["eos_token_id"] = stops if len(stops) > 1 else int(stops[0])
  out["pad_token_id"] = int(tokenizer.pad_id)
  return out


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def export_hf(model, out_dir: str | os.PathLike, *, config: ModelConfig | None = None,
              tokenizer=None, dtype: str = "float32") -> str:
  """Writes a Hugging Face model directory; returns its path.

  `model` is a `LoadedModel` (config and tokenizer from it) or an `nnx.State` of params (pass
  `config`, and `tokenizer` for tokenizer files). `dtype`: `float32` or `bfloat16` tensors.
  """
  if hasattr(model, "params") and hasattr(model, "config"):
    params = model.params
    config = config or model.config
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
  else:
    params = model
  if config is None:
    raise ValueError("export_hf needs the ModelConfig of bare params (config=...)")
  out_dir = str(out_dir)
  if storage.is_remote(out_dir):
    # safetensors is written by seeking; a bucket gets the finished files, config.json last
    # (a reader that finds it finds the weights).
    with tempfile.TemporaryDirectory(prefix="rest_jax_export_") as local:
      export_hf(params, local, config=config, tokenizer=tokenizer, dtype=dtype)
      storage.upload_tree(local, out_dir, last=("config.json",))
    log.info("uploaded the export to %s", out_dir)
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  np_dtype = host_dtype(dtype)
  c = hf_config(config, tokenizer, dtype)
  tensors = [(name, shape, np_dtype, produce)
             for name, shape, produce in export_tensors(config, params)]
  safetensors_io.write(os.path.join(out_dir, "model.safetensors"), tensors,
                       metadata={"format": "pt"})
  _write_json(os.path.join(out_dir, "config.json"), c)
  _write_json(os.path.join(out_dir, "generation_config.json"), _generation_config(tokenizer))
  if tokenizer is not None and hasattr(tokenizer, "save_hf"):
    tokenizer.save_hf(out_dir, model_max_length=config.max_seq_len,
                      tokenizer_class=_SPM_CLASS[config.family])
  elif tokenizer is not None:
    log.warning("%s has no Hugging Face files; the export has no tokenizer",
                type(tokenizer).__name__)
  log.info("exported %d tensors to %s", len(tensors), out_dir)
  return out_dir
