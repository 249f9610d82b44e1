"""Tokenizers: GGUF metadata, tokenizer.json and SentencePiece files against transformers.

The references are transformers' own tokenizers of the shipped GGUF files (they rebuild them
from the same metadata) and of the directories we export.
"""

import json
import os

import jinja2
import pytest

from rest_jax import tokenizers as tok_lib
from rest_jax.models.loading import packaged_gguf
from rest_jax.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Unicode: héllo wörld, naïve café, 日本語のテキスト, Привет мир, emoji 🤖🎉, Ω≈ç√∫.",
    "Digits 0 7 42 1234567890 3.14159 -12e5 1,000,000 and 2+2=4",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "Whitespace   runs\t\ttabs\n\n\nnewlines    and trailing spaces   ",
    "  leading spaces, {\"json\": [1, 2, null]}, <html><b>tags</b></html> x<y && y>z",
    "Special-looking text: <|im_start|>user\nhi<|im_end|> <start_of_turn>model\n<end_of_turn>",
]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4*6?  Explain\nbriefly."},
]


def _gguf(preset):
  path = packaged_gguf(preset)
  return os.path.dirname(path), os.path.basename(path), path


@pytest.fixture(scope="module")
def smollm2():
  from transformers import AutoTokenizer
  d, name, path = _gguf("smollm2-135m")
  ref = AutoTokenizer.from_pretrained(d, gguf_file=name, local_files_only=True)
  return tok_lib.load_tokenizer(path), ref


@pytest.fixture(scope="module")
def gemma3():
  from transformers import AutoTokenizer
  d, name, path = _gguf("gemma3-270m")
  ref = AutoTokenizer.from_pretrained(d, gguf_file=name, local_files_only=True)
  return tok_lib.load_tokenizer(path), ref


def _ours_with_bos(tok, text):
  ids = tok.encode(text)
  return ([tok.bos_id] if tok.bos_id is not None else []) + ids


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_gguf_tokenizer_ids_match_transformers(which, request):
  ours, ref = request.getfixturevalue(which)
  for text in TEXTS:
    assert _ours_with_bos(ours, text) == ref(text)["input_ids"], text
    assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
  assert ours.vocab_size == len(ref)


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_decode_and_token_strings(which, request):
  ours, ref = request.getfixturevalue(which)
  for text in TEXTS[:6]:
    ids = ours.encode(text)
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids) == text
    assert [ours.id_to_token(i) for i in ids] == ref.convert_ids_to_tokens(ids)
  # Special tokens are dropped when decoding.
  assert ours.decode([ours.eos_id] + ours.encode("ab")) == "ab"


def test_special_ids():
  smol = tok_lib.load_tokenizer(packaged_gguf("smollm2-135m"))
  # SmolLM2's tokenizer adds no BOS; <|im_end|> ends a turn and the sequence.
  assert smol.bos_id is None and smol.eos_id == smol.token_to_id("<|im_end|>") == 2
  assert smol.stop_ids[0] == 2 and smol.token_to_id("<|endoftext|>") in smol.stop_ids
  gem = tok_lib.load_tokenizer(packaged_gguf("gemma3-270m"))
  assert (gem.bos_id, gem.eos_id, gem.pad_id) == (2, 1, 0)
  assert set(gem.stop_ids) == {1, gem.token_to_id("<end_of_turn>")} == {1, 106}
  assert gem.id_to_token(106) == "<end_of_turn>"


def test_chat_template_matches_transformers(smollm2):
  ours, ref = smollm2
  for messages in (MESSAGES, MESSAGES[1:2], MESSAGES[1:3]):
    for gen in (True, False):
      expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
      got = ours.apply_chat_template(messages, add_generation_prompt=gen)
      assert got == expected
      assert ours.encode(got) == ref(expected, add_special_tokens=False)["input_ids"]
  assert ours.encode("<|im_start|>") == [ours.token_to_id("<|im_start|>")]


def test_gemma_base_has_no_template_and_renders_plain(gemma3):
  ours, _ = gemma3
  assert ours.chat_template is None
  assert ours.apply_chat_template([{"role": "user", "content": "Question: 1+1?"}]) == \
      "Question: 1+1?"


def test_template_raise_exception_and_special_tokens():
  template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}"
              "{{ raise_exception('no tools') }}{% endif %}{{ m['content'] | tojson }}"
              "{% endfor %}{% if add_generation_prompt %}{{ eos_token }}{% endif %}")
  out = tok_lib.render_chat_template(template, [{"role": "user", "content": "é\"x"}],
                                     special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
  assert out == '<s>"é\\"x"</s>'
  with pytest.raises(jinja2.TemplateError, match="no tools"):
    tok_lib.render_chat_template(template, [{"role": "tool", "content": ""}])


def test_tokenizer_json_directory_roundtrip(smollm2, tmp_path):
  """HFTokenizer -> tokenizer.json + tokenizer_config.json, read back by us and transformers."""
  from transformers import AutoTokenizer
  ours, _ = smollm2
  ours.save_hf(tmp_path)
  again = tok_lib.load_tokenizer(tmp_path)
  assert isinstance(again, HFTokenizer)
  ref = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  for text in TEXTS:
    assert again.encode(text) == ours.encode(text)
    assert ref(text)["input_ids"] == _ours_with_bos(again, text)
  assert (again.bos_id, again.eos_id, again.pad_id, again.stop_ids) == (
      ours.bos_id, ours.eos_id, ours.pad_id, ours.stop_ids)
  assert again.apply_chat_template(MESSAGES) == ref.apply_chat_template(
      MESSAGES, tokenize=False, add_generation_prompt=True)


def test_tokenizer_json_bos_from_post_processor(tmp_path):
  """A tokenizer.json whose post-processor adds BOS (Llama 3 style) is read as adding BOS."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "<unk>": 4}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<s>", "</s>"])
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": "</s>",
       "chat_template": [{"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"}]}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
  t = tok_lib.load_tokenizer(tmp_path / "tokenizer.json")
  assert (t.bos_id, t.eos_id, t.pad_id) == (0, 1, 1)
  assert t.encode("a b") == [2, 3]  # no special tokens from encode
  assert t.stop_ids == (1, 3)
  assert t.apply_chat_template([{"role": "user", "content": "a"}]) == "<s>a"


def test_sentencepiece_model_file_roundtrip(gemma3, tmp_path):
  import sentencepiece as spm
  ours, _ = gemma3
  files = ours.save_hf(tmp_path)
  assert "tokenizer.model" in files
  again = tok_lib.load_tokenizer(tmp_path)
  assert isinstance(again, SentencePieceTokenizer)
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
  for text in TEXTS:
    assert again.encode(text) == ours.encode(text)
  for text in TEXTS[:6]:  # no control-token text: plain SentencePiece agrees
    assert sp.encode(text) == ours.encode(text)
  assert (again.bos_id, again.eos_id, again.pad_id) == (ours.bos_id, ours.eos_id, ours.pad_id)


def test_json_dict_roundtrip(smollm2, gemma3):
  for tok in (smollm2[0], gemma3[0], ByteTokenizer()):
    d = json.loads(json.dumps(tok_lib.to_json_dict(tok)))
    again = tok_lib.from_json_dict(d)
    assert type(again) is type(tok)
    for text in TEXTS:
      assert again.encode(text) == tok.encode(text)
    assert (again.bos_id, again.eos_id, again.pad_id, again.vocab_size) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size)


def test_byte_tokenizer_unchanged():
  t = ByteTokenizer()
  assert isinstance(t, tok_lib.Tokenizer)
  assert t.encode("hé") == [104, 195, 169] and t.decode([104, 195, 169, 258]) == "hé"
  assert (t.pad_id, t.bos_id, t.eos_id, t.stop_ids) == (256, 257, 258, (258,))
  assert t.id_to_token(257) == "<bos>"


def test_seqio_vocabulary_adapter(smollm2):
  import tensorflow as tf
  ours, _ = smollm2
  vocab = tok_lib.as_seqio_vocabulary(ours)
  text = TEXTS[1]
  assert vocab.encode(text) == ours.encode(text)
  assert vocab.decode(ours.encode(text)) == text
  assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ours.encode(text)
  assert vocab.eos_id == 2 and vocab.vocab_size == 49152


def test_bad_tokenizer_files_raise_clear_errors(tmp_path):
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(tok_lib.TokenizerError, match="tokenizer.json"):
    tok_lib.load_tokenizer(bad)
  bad_model = tmp_path / "x.model"
  bad_model.write_bytes(b"\x00garbage")
  with pytest.raises(tok_lib.TokenizerError, match="x.model"):
    tok_lib.load_tokenizer(bad_model)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(tok_lib.TokenizerError, match="no tokenizer.json"):
    tok_lib.load_tokenizer(empty)


# ---------------------------------------------------------------- Qwen3 and Llama 3.2 templates
# The templates the Qwen3 and Llama 3.2 instruct checkpoints ship (tokenizer_config.json), kept
# verbatim in tests/chat_templates/.

TEMPLATES = os.path.join(os.path.dirname(__file__), "chat_templates")
THINKING_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>\nTwo plus three.\n</think>\n\n5"},
    {"role": "user", "content": "And 4*6?"},
]


def _template_tokenizer_dir(tmp_path, template_file, specials, eos):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {c: i for i, c in enumerate(sorted(tok_lib._bytes_to_unicode().values()))}
  tok = Tokenizer(models.BPE(vocab, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(specials)
  with open(os.path.join(TEMPLATES, template_file), encoding="utf-8") as f:
    template = f.read()
  ids = {t: 256 + i for i, t in enumerate(specials)}
  HFTokenizer(tok, bos_token_id=ids.get("<|begin_of_text|>"), eos_token_id=ids[eos],
              chat_template=template).save_hf(tmp_path)
  return str(tmp_path)


@pytest.mark.parametrize("thinking", [None, True, False])
def test_qwen3_template_with_and_without_thinking_matches_transformers(tmp_path, thinking):
  from transformers import AutoTokenizer

  from rest_jax.tasks.prompts import PromptFormat, TaskPromptDefaults, resolve_prompt_format
  d = _template_tokenizer_dir(tmp_path, "qwen3.jinja", ["<|endoftext|>", "<|im_start|>",
                                                        "<|im_end|>", "<think>", "</think>"],
                              eos="<|im_end|>")
  ours, ref = tok_lib.load_tokenizer(d), AutoTokenizer.from_pretrained(d)
  kw = {} if thinking is None else {"enable_thinking": thinking}
  for messages in (THINKING_MESSAGES, THINKING_MESSAGES[1:2], THINKING_MESSAGES[:3]):
    for gen in (True, False):
      expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kw)
      assert ours.apply_chat_template(messages, add_generation_prompt=gen, **kw) == expected
  # The prompt format's knob: thinking off ends the prompt with an empty think block.
  fmt = resolve_prompt_format(PromptFormat(style="chat", thinking=thinking, system="S"),
                              TaskPromptDefaults(style="chat"))
  prompt = fmt.render("1+1?", [], ours)
  assert prompt == ref.apply_chat_template(
      [{"role": "system", "content": "S"}, {"role": "user", "content": "1+1?"}], tokenize=False,
      add_generation_prompt=True, **kw)
  assert prompt.endswith("<think>\n\n</think>\n\n") == (thinking is False)


def test_llama3_2_template_matches_transformers(tmp_path):
  from transformers import AutoTokenizer
  d = _template_tokenizer_dir(
      tmp_path, "llama3_2.jinja",
      ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
       "<|eot_id|>"], eos="<|eot_id|>")
  ours, ref = tok_lib.load_tokenizer(d), AutoTokenizer.from_pretrained(d)
  for messages in (MESSAGES, MESSAGES[1:2]):
    for gen in (True, False):
      expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
      assert ours.apply_chat_template(messages, add_generation_prompt=gen) == expected
      assert "Today Date: " in expected


def test_thinking_knob_needs_a_template_with_the_switch(smollm2):
  from rest_jax.tasks.prompts import PromptFormat, TaskPromptDefaults, resolve_prompt_format
  fmt = resolve_prompt_format(PromptFormat(style="chat", thinking=False),
                              TaskPromptDefaults(style="chat"))
  with pytest.raises(ValueError, match="PromptFormat.thinking=False needs a chat template"):
    fmt.render("1+1?", [], smollm2[0])
  with pytest.raises(ValueError, match="'chat' style only"):
    resolve_prompt_format(PromptFormat(style="plain", thinking=True), TaskPromptDefaults())
