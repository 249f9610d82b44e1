"""Logits parity with transformers (torch, CPU, float32) on the same tokens.

* SmolLM2-135M-Instruct and Gemma 3 270M from the shipped GGUF files. The reference is
  transformers' model class built from the upstream `config.json` values, holding the tensors
  transformers itself dequantises from the same GGUF (`load_gguf_checkpoint`: its own name map,
  Q/K un-permutation and Gemma norm shift). (`from_pretrained(gguf_file=...)` would do the same
  but insists on the `accelerate` package, which is not installed.)
* Tiny random Qwen2, Llama (untied, Llama 3 RoPE scaling) and Gemma 3 (sliding window shorter
  than the text) models created with transformers and saved with `save_pretrained`.

Our side runs sharded over the 8 simulated devices (`load_model`'s default mesh), so the GGUF
reads here are partial (per-shard rows and columns).
"""

import numpy as np
import pytest
import torch

from rest_jax.models import PRESETS
from rest_jax.models.loading import load_hf, load_model, packaged_gguf

TEXTS = [
    "The capital of France is Paris. 12345 + 678 = ?",
    "def f(x):\n    return x * 2  # héllo 🤖\n\n\tdone",
]
# Measured max |ours - transformers| over these texts (logits up to ~36 in magnitude):
# SmolLM2 1.1e-4, Gemma 3 6.2e-5 (float32 summation order over 30/18 layers); tiny models ~1e-6.
GGUF_ATOL = 5e-4
TINY_ATOL = 2e-5


def _hf_model_from_gguf(config, path):
  from transformers import AutoModelForCausalLM
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                           attn_implementation="eager")
  parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)
  result = model.load_state_dict(parsed["tensors"], strict=False)
  assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
  model.tie_weights()
  return model.eval()


def _ours_logits(loaded, ids):
  logits, _ = loaded.module()(np.asarray([ids], np.int32))
  return np.asarray(logits)[0]


def _ref_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def _ids(tok, text):
  return ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text)


@pytest.fixture(scope="module")
def smollm2():
  from transformers import LlamaConfig
  ours = load_model("smollm2-135m")
  # HuggingFaceTB/SmolLM2-135M-Instruct config.json
  config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
  return ours, _hf_model_from_gguf(config, packaged_gguf("smollm2-135m"))


@pytest.fixture(scope="module")
def gemma3():
  from transformers import Gemma3TextConfig
  ours = load_model("gemma3-270m")
  # google/gemma-3-270m config.json
  config = Gemma3TextConfig(
      vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
      num_attention_heads=4, num_key_value_heads=1, head_dim=256,
      max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
      rope_local_base_freq=10_000.0, query_pre_attn_scalar=256, sliding_window=512,
      sliding_window_pattern=6, hidden_activation="gelu_pytorch_tanh",
      tie_word_embeddings=True, final_logit_softcapping=None, attn_logit_softcapping=None)
  return ours, _hf_model_from_gguf(config, packaged_gguf("gemma3-270m"))


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_gguf_logits_match_transformers(which, request):
  ours, ref = request.getfixturevalue(which)
  for text in TEXTS:
    ids = _ids(ours.tokenizer, text)
    a, b = _ours_logits(ours, ids), _ref_logits(ref, ids)
    assert a.shape == b.shape == (len(ids), ours.config.vocab_size)
    np.testing.assert_allclose(a, b, atol=GGUF_ATOL, rtol=0)
    np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("which,preset", [("smollm2", "smollm2-135m"), ("gemma3", "gemma3-270m")])
def test_shipped_files_agree_with_presets(which, preset, request):
  ours, _ = request.getfixturevalue(which)
  assert ours.config == PRESETS[preset]
  assert len(ours.params["embed"][...].sharding.device_set) == 8


def test_gemma3_norms_are_shifted_back():
  """llama.cpp stores Gemma norms as 1 + w; the model must see w (it applies 1 + w)."""
  from rest_jax.models.gguf_import import GGUFModel
  m = GGUFModel(packaged_gguf("gemma3-270m"))
  name = "model.layers.0.input_layernorm.weight"
  stored = m._dequantize(m._tensors[m.gguf_name(name)], 0, 1).reshape(-1)
  np.testing.assert_array_equal(m.read(name, slice(None)), stored - 1.0)


# ---------------------------------------------------------------- tiny random transformers models

def _tiny_tokenizer():
  """A byte-level BPE tokenizer of 256 bytes + 3 specials (no merges): 259 tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  from rest_jax.tokenizers import HFTokenizer, _bytes_to_unicode
  vocab = {c: i for i, c in enumerate(sorted(_bytes_to_unicode().values()))}
  tok = Tokenizer(models.BPE(vocab, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  return HFTokenizer(tok, bos_token_id=None, eos_token_id=258, pad_token_id=256)


def _perturbed(model, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _tiny(kind):
  from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                            Qwen2Config, Qwen2ForCausalLM)
  common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
  torch.manual_seed(0)
  if kind == "qwen2":
    return Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True))
  if kind == "llama":
    return LlamaForCausalLM(LlamaConfig(
        **common, head_dim=16, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
  return Gemma3ForCausalLM(Gemma3TextConfig(
      **common, head_dim=32, query_pre_attn_scalar=24, sliding_window=4,
      layer_types=["sliding_attention", "full_attention", "sliding_attention"],
      rope_theta=1e6, rope_local_base_freq=1e4, final_logit_softcapping=30.0))


@pytest.mark.parametrize("kind", ["qwen2", "llama", "gemma3"])
def test_tiny_random_hf_models_match_transformers(kind, tmp_path):
  model = _perturbed(_tiny(kind))
  model.config._attn_implementation = "eager"
  model.save_pretrained(tmp_path, max_shard_size="100KB")  # several files + an index
  assert (tmp_path / "model.safetensors.index.json").exists()
  _tiny_tokenizer().save_hf(tmp_path)
  ours = load_hf(str(tmp_path))
  assert ours.config.family == kind
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 320, size=12).tolist()  # longer than gemma3's window of 4
  np.testing.assert_allclose(_ours_logits(ours, ids), _ref_logits(model, ids), atol=TINY_ATOL,
                             rtol=0)
  text_ids = ours.tokenizer.encode("héllo wörld 123")
  np.testing.assert_allclose(_ours_logits(ours, text_ids), _ref_logits(model, text_ids),
                             atol=TINY_ATOL, rtol=0)


def _write_qwen2_gguf(model, path):
  """A tiny Qwen2 GGUF (some tensors Q8_0), with a byte-level BPE vocabulary and 3 merges."""
  import gguf

  from rest_jax.models.gguf_import import _LAYER_NAMES, _LAYER_NAMES_PLAIN
  from rest_jax.tokenizers import _bytes_to_unicode
  c = model.config
  w = gguf.GGUFWriter(str(path), "qwen2")
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(1e6)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  tokens = sorted(_bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "<|endoftext|>",
                                                  "<|im_start|>", "<|im_end|>"]
  tokens += [f"[PAD{i}]" for i in range(c.vocab_size - len(tokens))]
  types = [1] * 259 + [3, 3, 3] + [5] * (c.vocab_size - 262)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("qwen2")
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(["Ġ t", "h e", "Ġt he"])
  w.add_eos_token_id(261)
  w.add_pad_token_id(259)
  w.add_add_bos_token(False)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight"}
  for i in range(c.num_hidden_layers):
    for hf, gg in {**_LAYER_NAMES, **_LAYER_NAMES_PLAIN}.items():
      names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
  for hf_name, tensor in model.state_dict().items():
    if hf_name not in names:
      continue
    data = tensor.detach().numpy().astype(np.float32)
    if hf_name.endswith(("mlp.up_proj.weight", "self_attn.v_proj.weight")):
      q = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(names[hf_name], gguf.quantize(data, q), raw_dtype=q)
    else:
      w.add_tensor(names[hf_name], data)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_tiny_qwen2_gguf_matches_transformers(tmp_path):
  """Qwen2 GGUF: no Q/K permutation, biases, Q8_0 rows, qwen2 pre-tokenizer."""
  from transformers import AutoTokenizer
  model = _perturbed(_tiny("qwen2"), seed=3)
  path = tmp_path / "tiny-qwen2.gguf"
  _write_qwen2_gguf(model, path)
  ours = load_model(str(path))
  assert ours.config.family == "qwen2" and ours.config.qkv_bias
  ref = _hf_model_from_gguf(model.config, str(path))
  ref_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
  text = "the then 12345 héllo  the\n\nthe<|im_end|>"
  ids = ours.tokenizer.encode(text)
  assert ids == ref_tok(text)["input_ids"]
  assert ours.tokenizer.token_to_id("Ġthe") in ids
  np.testing.assert_allclose(_ours_logits(ours, ids), _ref_logits(ref, ids), atol=TINY_ATOL,
                             rtol=0)
