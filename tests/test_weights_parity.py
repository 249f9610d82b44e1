"""Logits parity with transformers (torch, CPU, float32) on the same tokens.

* SmolLM2-135M-Instruct and Gemma 3 270M from the shipped GGUF files. The reference is
  transformers' model class built from the upstream `config.json` values, holding the tensors
  transformers itself dequantises from the same GGUF (`load_gguf_checkpoint`: its own name map,
  Q/K un-permutation and Gemma norm shift). (`from_pretrained(gguf_file=...)` would do the same
  but insists on the `accelerate` package, which is not installed.)
* Tiny random Qwen2, Llama (untied, Llama 3 RoPE scaling) and Gemma 3 (sliding window shorter
  than the text) models created with transformers and saved with `save_pretrained`.
* Tiny random Qwen3 (QK-norm, head_dim != hidden / heads) and Llama 3.2-shaped (tied, Llama 3
  RoPE scaling by 32) models: log-probabilities, greedy tokens, export back to transformers,
  and the same directory as a Hub cache snapshot loaded through `hf://` offline.

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
                            Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
  common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
  torch.manual_seed(0)
  if kind == "qwen2":
    return Qwen2ForCausalLM(Qwen2Config(**common, rope_theta=1e6, tie_word_embeddings=True))
  if kind == "qwen3":  # head_dim 24, not hidden / heads = 16, as in every Qwen3
    return Qwen3ForCausalLM(Qwen3Config(**common, head_dim=24, rope_theta=1e6,
                                        tie_word_embeddings=True))
  if kind == "llama3.2":
    return LlamaForCausalLM(LlamaConfig(
        **common, head_dim=16, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
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


def _write_qwen2_gguf(model, path, arch="qwen2"):
  """A tiny Qwen2 (or Qwen3) GGUF (some tensors Q8_0), with a byte-level BPE vocabulary and 3
  merges."""
  import gguf

  from rest_jax.models.gguf_import import _LAYER_NAMES, _LAYER_NAMES_PLAIN
  from rest_jax.tokenizers import _bytes_to_unicode
  c = model.config
  w = gguf.GGUFWriter(str(path), arch)
  if arch == "qwen3":  # llama.cpp writes the head size when it is not hidden / heads
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
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


def test_tiny_qwen3_gguf_matches_transformers(tmp_path):
  """Qwen3 GGUF: QK-norm tensors, head size from `key_length`, no Q/K permutation."""
  model = _perturbed(_tiny("qwen3"), seed=4)
  path = tmp_path / "tiny-qwen3.gguf"
  _write_qwen2_gguf(model, path, arch="qwen3")
  ours = load_model(str(path))
  assert ours.config.family == "qwen3" and ours.config.qk_norm and ours.config.head_dim == 24
  ref = _hf_model_from_gguf(model.config, str(path))
  ids = ours.tokenizer.encode("the then 12345 héllo  the")
  np.testing.assert_allclose(_ours_logits(ours, ids), _ref_logits(ref, ids), atol=TINY_ATOL,
                             rtol=0)


# ---------------------------------------------------------------- Qwen3 and Llama 3.2, through hf://

LOGPROB_ATOL = 1e-4


def _log_probs(logits, ids):
  """log p(ids[t+1] | ids[:t+1]) from [T, V] logits."""
  logits = np.asarray(logits, np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]


def _torch_greedy(model, prompt, n, stops):
  ids, out = list(prompt), []
  for _ in range(n):
    nxt = int(_ref_logits(model, ids)[-1].argmax())
    if nxt in stops:
      break
    out.append(nxt)
    ids.append(nxt)
  return out


def _as_hub_snapshot(src, hf_home, repo, commit):
  """`src`'s files laid out as huggingface_hub's cache holds `repo` at `commit` (main)."""
  import shutil
  root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
  shutil.copytree(src, root / "snapshots" / commit)
  (root / "refs").mkdir()
  (root / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module", params=["qwen3", "llama3.2"])
def new_family(request, tmp_path_factory):
  model = _perturbed(_tiny(request.param), seed=5)
  model.config._attn_implementation = "eager"
  path = tmp_path_factory.mktemp(request.param.replace(".", ""))
  model.save_pretrained(path)
  _tiny_tokenizer().save_hf(path)
  return request.param, model, path


def test_new_families_match_transformers(new_family, tmp_path):
  """Log-probabilities within 1e-4, greedy tokens equal, and the export loads back."""
  import jax
  from transformers import AutoModelForCausalLM

  from rest_jax.models.hf_export import export_hf
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.sampling.sampler import Sampler, SamplingParams
  kind, ref, path = new_family
  ours = load_hf(str(path))
  if kind == "qwen3":
    assert ours.config.family == "qwen3" and ours.config.qk_norm
    assert ours.config.head_dim == 24 != ours.config.embed_dim // ours.config.num_heads
  else:
    assert ours.config.tie_embeddings and ours.config.rope_scaling.factor == 32.0
  ids = np.random.default_rng(2).integers(0, 320, size=24).tolist()
  np.testing.assert_allclose(_log_probs(_ours_logits(ours, ids), ids),
                             _log_probs(_ref_logits(ref, ids), ids), atol=LOGPROB_ATOL, rtol=0)

  # Greedy through the sampler (prefill + cached decode), against full forwards in torch.
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  one = load_hf(str(path), mesh)
  tok = one.tokenizer
  prompts = [tok.encode("héllo wörld"), tok.encode("12 + 7 =")]
  sampler = Sampler(one.graphdef, one.config, tok, mesh, num_slots=2, steps_per_dispatch=4,
                    prompt_buckets=(16,), cache_buckets=(48,))
  out = sampler.generate(one.params, prompts, num_samples=1, seed=0,
                         sampling=SamplingParams(temperature=0.0, max_new_tokens=16))
  for prompt, (c,) in zip(prompts, out):
    want = _torch_greedy(ref, prompt, 16, set(tok.stop_ids))
    assert c.tokens == want and len(want) > 0

  export_hf(ours, tmp_path / "export")
  again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32,
                                               attn_implementation="eager").eval()
  assert type(again) is type(ref)
  np.testing.assert_allclose(_ref_logits(again, ids), _ref_logits(ref, ids), atol=TINY_ATOL,
                             rtol=0)


def test_new_families_load_through_hf_offline(new_family, tmp_path, monkeypatch):
  """The same directory as a Hub cache snapshot: `hf://` finds it with HF_HUB_OFFLINE=1."""
  import huggingface_hub.constants

  from rest_jax.models.loading import model_config_of
  kind, ref, path = new_family
  commit = "0123456789abcdef0123456789abcdef01234567"
  _as_hub_snapshot(path, tmp_path, "tiny-org/tiny-" + kind, commit)
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  # huggingface_hub reads these once, at import.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  spec = f"hf://tiny-org/tiny-{kind}"
  ours = load_model(spec)
  assert ours.source == f"hf://tiny-org/tiny-{kind}@{commit}"
  ids = np.random.default_rng(3).integers(0, 320, size=20).tolist()
  np.testing.assert_allclose(_log_probs(_ours_logits(ours, ids), ids),
                             _log_probs(_ref_logits(ref, ids), ids), atol=LOGPROB_ATOL, rtol=0)
  assert load_model(f"{spec}@{commit}").source == ours.source
  cfg, tok = model_config_of(spec)
  assert cfg == load_hf(str(path)).config and tok.encode("abc") == ours.tokenizer.encode("abc")
