"""Weights I/O: streaming onto 8 devices, export -> import, checkpoints, commands, errors."""

import argparse
import json
import logging
import os

import jax
import numpy as np
import pytest

from helpers import family_configs, to_np
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.commands import export as export_cmd
from rest_jax.commands import logprobs as logprobs_cmd
from rest_jax.models import params as params_lib
from rest_jax.models.hf_export import export_hf
from rest_jax.models.hf_import import HFDirectory
from rest_jax.models.loading import (LoadedModel, load_hf, load_model, packaged_gguf,
                                     save_model_checkpoint)
from rest_jax.models.weights import WeightsError, param_path, stream_params
from rest_jax.tokenizers import HFTokenizer, _bytes_to_unicode

def _one_device():
  return mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])


def _tiny_tokenizer():
  """Byte-level BPE over the 256 bytes plus 3 specials: 259 tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {c: i for i, c in enumerate(sorted(_bytes_to_unicode().values()))}
  tok = Tokenizer(models.BPE(vocab, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  return HFTokenizer(tok, bos_token_id=None, eos_token_id=258, pad_token_id=256)


def _random_model(cfg, seed=0) -> LoadedModel:
  """Random params made with numpy on one device (no jit compiles: fast)."""
  graphdef, abstract = params_lib.abstract_params(cfg)
  rng = np.random.default_rng(seed)
  device = jax.devices()[0]
  params = jax.tree.map(
      lambda x: jax.device_put(rng.normal(0, 0.5, x.shape).astype(x.dtype), device), abstract)
  return LoadedModel(cfg, graphdef, params, _tiny_tokenizer(), "random")


def _flat(params):
  out = {}
  for path, var in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: hasattr(x, "get_value"))[0]:
    out[param_path(path)] = to_np(var.get_value())
  return out


def _assert_params_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


CONFIGS = {name: cfg.replace(vocab_size=320) for name, cfg in family_configs().items()}


# ---------------------------------------------------------------- streaming

def test_streaming_on_8_devices_reads_only_each_shard(tmp_path):
  cfg = CONFIGS["llama_untied_scaled"]
  model = _random_model(cfg)
  export_hf(model, tmp_path)
  source = HFDirectory(tmp_path)
  reads, asked = [], []
  original_read = source.read

  def read(name, rows, cols=None):
    out = original_read(name, rows, cols)
    reads.append((name, out.size, int(np.prod(source.shape(name)))))
    return out

  source.read = read
  mesh = mesh_lib.create_mesh((2, 2, 2))
  _, params = stream_params(cfg, mesh, source, config_origin="test",
                            on_read=lambda p, idx: asked.append((p, idx)))
  expected = _flat(model.params)
  for path, var in jax.tree_util.tree_flatten_with_path(
      params, is_leaf=lambda x: hasattr(x, "get_value"))[0]:
    p = param_path(path)
    array = var.get_value()
    assert len(array.sharding.device_set) == 8
    for shard in array.addressable_shards:  # every device holds exactly its slice
      np.testing.assert_array_equal(np.asarray(shard.data), expected[p][shard.index], err_msg=p)
    if not array.sharding.is_fully_replicated:
      full = tuple((0, d) for d in array.shape)
      mine = [idx for q, idx in asked if q == p]
      assert mine and all(idx != full for idx in mine), p
  # The reader was never asked for a whole tensor of a sharded parameter.
  sharded_hf = [r for r in reads if r[0].endswith(("q_proj.weight", "k_proj.weight",
                                                   "v_proj.weight", "o_proj.weight",
                                                   "gate_proj.weight", "up_proj.weight",
                                                   "down_proj.weight", "embed_tokens.weight",
                                                   "lm_head.weight"))]
  assert sharded_hf and all(size < total for _, size, total in sharded_hf)


# ---------------------------------------------------------------- export -> import

@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_export_reimport_is_exact(family, tmp_path):
  cfg = CONFIGS[family]
  model = _random_model(cfg, seed=3)
  export_hf(model, tmp_path)
  again = load_hf(str(tmp_path), _one_device())
  assert again.config == cfg
  _assert_params_equal(model.params, again.params)
  assert again.tokenizer.encode("héllo") == model.tokenizer.encode("héllo")
  names = set(HFDirectory(tmp_path).names())
  assert ("lm_head.weight" in names) == (not cfg.tie_embeddings)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_exported_tiny_models_load_in_transformers(family, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM
  model = _random_model(CONFIGS[family], seed=6)
  export_hf(model, tmp_path)
  ref, info = AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"]
  ids = np.random.default_rng(0).integers(0, 320, 12).tolist()
  with torch.no_grad():
    want = ref.eval()(torch.tensor([ids])).logits[0].numpy()
  got, _ = model.module()(np.asarray([ids], np.int32))
  np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def smollm2():
  return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2_export(smollm2, tmp_path_factory):
  out = tmp_path_factory.mktemp("smollm2_hf")
  export_hf(smollm2, out)
  return out


def test_smollm2_export_reimport_is_exact(smollm2, smollm2_export):
  again = load_model(str(smollm2_export))
  assert again.config == smollm2.config
  _assert_params_equal(smollm2.params, again.params)
  text = "Hi <|im_start|> 42"
  assert again.tokenizer.encode(text) == smollm2.tokenizer.encode(text)
  assert again.tokenizer.chat_template == smollm2.tokenizer.chat_template


def test_exported_smollm2_loads_in_transformers(smollm2, smollm2_export):
  import torch
  import transformers
  from transformers import AutoModelForCausalLM, AutoTokenizer
  records = []

  class Handler(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  handler = Handler(level=logging.WARNING)
  transformers.logging.get_logger().addHandler(handler)
  try:
    model, info = AutoModelForCausalLM.from_pretrained(
        str(smollm2_export), dtype=torch.float32, output_loading_info=True)
    tok = AutoTokenizer.from_pretrained(str(smollm2_export))
  finally:
    transformers.logging.get_logger().removeHandler(handler)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info.get("mismatched_keys")
  bad = [m for m in records if any(w in m.lower() for w in ("missing", "unexpected", "newly",
                                                             "not used", "not initialized"))]
  assert not bad, bad
  text = "The capital of France is Paris. 12 + 34 = 46\n  x"
  ids = smollm2.tokenizer.encode(text)
  assert tok(text)["input_ids"] == ids
  with torch.no_grad():
    ref = model.eval()(torch.tensor([ids])).logits[0].numpy()
  ours, _ = smollm2.module()(np.asarray([ids], np.int32))
  # Measured max |diff| 1e-4 (float32 summation order); the weights are bit-identical.
  np.testing.assert_allclose(np.asarray(ours)[0], ref, atol=5e-4, rtol=0)


# ---------------------------------------------------------------- checkpoints and commands

def test_checkpoint_roundtrip_and_export_command(tmp_path, capsys):
  src = tmp_path / "hf"
  model = _random_model(CONFIGS["qwen2"], seed=5)
  export_hf(model, src)
  loaded = load_model(str(src))
  save_model_checkpoint(loaded, tmp_path / "ckpts", step=7, prefix="iter")
  for spec in (tmp_path / "ckpts", tmp_path / "ckpts" / "iter_007"):
    again = load_model(str(spec))
    assert again.config == loaded.config
    _assert_params_equal(loaded.params, again.params)
    assert again.tokenizer.encode("a b") == loaded.tokenizer.encode("a b")
    assert again.tokenizer.eos_id == 258
  parser = argparse.ArgumentParser()
  export_cmd.add_arguments(parser)
  out = tmp_path / "exported"
  rc = export_cmd.main(parser.parse_args(["--checkpoint", str(tmp_path / "ckpts"),
                                          "--out", str(out)]))
  assert rc == 0 and json.loads(capsys.readouterr().out)["family"] == "qwen2"
  _assert_params_equal(loaded.params, load_model(str(out)).params)


def test_tiny_preset_checkpoint_keeps_byte_tokenizer(tmp_path):
  tiny = load_model("tiny", seed=1)
  save_model_checkpoint(tiny, tmp_path)
  again = load_model(str(tmp_path))
  _assert_params_equal(tiny.params, again.params)
  assert again.tokenizer.encode("hi") == [104, 105] and again.tokenizer.bos_id == 257
  # A checkpoint whose recorded config disagrees with its arrays is refused by name.
  meta = tmp_path / "0" / "meta" / "metadata"
  d = json.loads(meta.read_text())
  d["model_config"]["mlp_dim"] = 512
  meta.write_text(json.dumps(d))
  _expect_error(tmp_path, str(tmp_path / "0" / "params"), "layers/mlp/down", "(4, 768, 256)",
                "(4, 512, 256)")


def test_nano_preset_is_a_byte_level_model_a_quarter_of_tiny(caplog):
  """The demo's model: randomly initialised with the byte tokenizer (no warning about missing
  tokenizer files), and what planning reads without weights is what loading builds."""
  from rest_jax.models import PRESETS
  from rest_jax.models.loading import model_config_of
  with caplog.at_level(logging.INFO, logger="rest_jax.models.loading"):
    nano = load_model("nano", seed=1)
  assert "no tokenizer files" not in caplog.text and "randomly initialised" in caplog.text
  assert nano.tokenizer.encode("hi") == [104, 105] and nano.tokenizer.bos_id == 257
  count = params_lib.param_count(nano.params)
  assert count == PRESETS["nano"].num_params() < PRESETS["tiny"].num_params() / 3
  planned, tokenizer = model_config_of("nano")
  assert planned == nano.config and tokenizer.encode("hi") == [104, 105]


def test_bfloat16_load(tiny_hf):
  f32 = load_model(str(tiny_hf), _one_device())
  bf16 = load_model(str(tiny_hf), _one_device(), dtype="bfloat16")
  assert bf16.config.param_dtype == "bfloat16"
  a, b = _flat(f32.params), _flat(bf16.params)
  for k in a:
    assert b[k].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(a[k].astype(jax.numpy.bfloat16), b[k])
  out = tiny_hf.parent / "bf16_export"
  export_hf(f32, out, dtype="bfloat16")
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  c = _flat(load_hf(str(out), _one_device()).params)  # read back as float32
  for k in a:
    np.testing.assert_array_equal(a[k].astype(jax.numpy.bfloat16).astype(np.float32), c[k])


def _logprobs_main(argv, capsys):
  """`rest-jax logprobs ARGV` as the command line runs it (errors become one line, exit 2)."""
  from rest_jax import cli
  rc = cli.main(["logprobs", *argv])
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def test_logprobs_command(tiny_hf, capsys):
  rc, out, _ = _logprobs_main(["--model", str(tiny_hf), "--text", "héllo"], capsys)
  assert rc == 0
  result = json.loads(out)
  tiny = load_model(str(tiny_hf), _one_device())
  ids = tiny.tokenizer.encode("héllo")  # this tokenizer has no BOS
  assert result["tokens"] == ids and result["logprobs"][0] is None
  assert result["token_strings"] == ["h", "Ã", "©", "l", "l", "o"]  # no merges: bytes
  logits, _ = tiny.module()(np.asarray([ids], np.int32))
  logp = jax.nn.log_softmax(np.asarray(logits)[0], axis=-1)
  want = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
  np.testing.assert_allclose(result["logprobs"][1:], want, atol=1e-5)
  assert result["sum_logprob"] == pytest.approx(sum(want), abs=1e-4)


def test_logprobs_smollm2_token_strings(smollm2):
  result = logprobs_cmd.logprobs_json(smollm2, "Hello world")
  assert result["tokens"] == smollm2.tokenizer.encode("Hello world")  # no BOS for SmolLM2
  assert result["token_strings"] == ["Hello", "Ġworld"]
  assert result["logprobs"][0] is None and result["logprobs"][1] < 0
  chat = logprobs_cmd.logprobs_json(smollm2, "Hi", chat=True)
  assert chat["token_strings"][0] == "<|im_start|>"


# ---------------------------------------------------------------- errors

def _expect_error(spec, *patterns):
  with pytest.raises(WeightsError) as err:
    load_model(str(spec), _one_device())
  for p in patterns:
    assert p in str(err.value), (p, str(err.value))
  return str(err.value)


def test_truncated_and_corrupt_gguf(tmp_path, capsys):
  src = packaged_gguf("smollm2-135m")
  size = os.path.getsize(src)
  truncated = tmp_path / "truncated.gguf"
  with open(src, "rb") as f:
    truncated.write_bytes(f.read(size // 2))
  _expect_error(truncated, str(truncated), "truncated", "ends at byte")
  rc, out, err = _logprobs_main(["--model", str(truncated), "--text", "x"], capsys)
  assert rc == 2 and not out and str(truncated) in err and "Traceback" not in err
  header_cut = tmp_path / "header_cut.gguf"
  with open(src, "rb") as f:
    header_cut.write_bytes(f.read(5000))
  _expect_error(header_cut, str(header_cut), "truncated")
  not_gguf = tmp_path / "not.gguf"
  not_gguf.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
  _expect_error(not_gguf, str(not_gguf), "not a GGUF file")
  garbage = tmp_path / "garbage.gguf"
  garbage.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + os.urandom(64))
  _expect_error(garbage, str(garbage))


@pytest.fixture()
def tiny_hf(tmp_path):
  out = tmp_path / "tiny_hf"
  export_hf(_random_model(CONFIGS["llama"], seed=2), out)
  return out


def test_sharded_index_and_fused_projections(tiny_hf):
  """Several files + model.safetensors.index.json, with fused qkv_proj / gate_up_proj."""
  from rest_jax.models import safetensors_io
  original = load_hf(str(tiny_hf), _one_device())
  src = safetensors_io.SafetensorsFile(tiny_hf / "model.safetensors")
  tensors = {k: np.array(src.array(k)) for k in src.keys()}
  del src
  (tiny_hf / "model.safetensors").unlink()
  for i in range(original.config.num_layers):
    p = f"model.layers.{i}."
    tensors[p + "self_attn.qkv_proj.weight"] = np.concatenate(
        [tensors.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
    tensors[p + "mlp.gate_up_proj.weight"] = np.concatenate(
        [tensors.pop(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")])
  names = sorted(tensors)
  files = {"model-00001-of-00002.safetensors": names[::2],
           "model-00002-of-00002.safetensors": names[1::2]}
  for fname, keys in files.items():
    safetensors_io.write(tiny_hf / fname, [(k, tensors[k].shape, tensors[k].dtype,
                                            lambda k=k: tensors[k]) for k in keys])
  index = {"metadata": {}, "weight_map": {k: f for f, ks in files.items() for k in ks}}
  (tiny_hf / "model.safetensors.index.json").write_text(json.dumps(index))
  again = load_hf(str(tiny_hf), mesh_lib.create_mesh((2, 2, 2)))
  _assert_params_equal(original.params, again.params)
  index["weight_map"]["model.norm.extra"] = "model-00001-of-00002.safetensors"
  (tiny_hf / "model.safetensors.index.json").write_text(json.dumps(index))
  _expect_error(tiny_hf, "model-00001-of-00002.safetensors", "model.norm.extra")


def test_truncated_and_corrupt_safetensors(tiny_hf, capsys):
  st = tiny_hf / "model.safetensors"
  data = st.read_bytes()
  st.write_bytes(data[:len(data) - 1000])
  _expect_error(tiny_hf, str(st), "truncated")
  rc, out, err = _logprobs_main(["--model", str(tiny_hf), "--text", "x"], capsys)
  assert rc == 2 and str(st) in err and "Traceback" not in err
  st.write_bytes(data[:8] + b"{bad json" + data[17:])
  _expect_error(tiny_hf, str(st), "corrupt safetensors header")
  st.write_bytes(data[:4])
  _expect_error(tiny_hf, str(st), "truncated")


def test_config_shapes_disagree_with_tensors(tiny_hf):
  cfg_path = tiny_hf / "config.json"
  c = json.loads(cfg_path.read_text())
  c["intermediate_size"] = 96
  cfg_path.write_text(json.dumps(c))
  msg = _expect_error(tiny_hf, str(tiny_hf / "model.safetensors"), "mlp.gate_proj.weight",
                      "(128, 64)", "(96, 64)", str(cfg_path))
  assert "shape" in msg


def test_missing_tensor_is_named(tiny_hf):
  cfg_path = tiny_hf / "config.json"
  c = json.loads(cfg_path.read_text())
  c["num_hidden_layers"] = 4
  cfg_path.write_text(json.dumps(c))
  _expect_error(tiny_hf, "model.layers.3.", "missing")


def test_tokenizer_vocab_larger_than_model(tmp_path):
  out = tmp_path / "small_vocab"
  export_hf(_random_model(CONFIGS["llama"].replace(vocab_size=256), seed=4), out)
  _expect_error(out, str(out / "tokenizer.json"), "259 tokens", "vocab_size=256")


def test_unknown_spec_and_not_a_model_dir(tmp_path):
  _expect_error("no-such-model", "no-such-model", "not a preset")
  (tmp_path / "x.txt").write_text("hello")
  _expect_error(tmp_path / "x.txt", "not a GGUF file")
  empty = tmp_path / "empty"
  empty.mkdir()
  _expect_error(empty, "neither a Hugging Face directory")


def test_export_refuses_what_transformers_cannot_express(tmp_path):
  cfg = CONFIGS["llama"].replace(qk_norm=True)
  with pytest.raises(WeightsError, match="no transformers equivalent"):
    export_hf(_random_model(cfg), tmp_path)
