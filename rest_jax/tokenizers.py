"""Tokenizers: one small protocol, and every way rest_jax gets a vocabulary.

Every tokenizer answers the `Tokenizer` protocol, so tasks, the sampler and the trainer never
care where the vocabulary came from:

* `ByteTokenizer`: UTF-8 bytes, for the `tiny` model (needs no file);
* `HFTokenizer`: a `tokenizers` (Rust) tokenizer, from a `tokenizer.json` or built from a GGUF's
  byte-level BPE metadata (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Qwen2, Llama 3);
* `SentencePieceTokenizer`: a SentencePiece model, from a `.model` file or built from a GGUF's
  SentencePiece metadata (`tokenizer.ggml.model == "llama"`: Gemma, Llama 2) as a BPE
  `ModelProto` with the file's pieces, scores and piece types.

Conventions (shared with `tasks/sft.py` and the sampler): `encode(text)` adds no special
tokens but turns special-token text (`<|im_start|>`, `<start_of_turn>`) into their ids;
`bos_id` is the id the model expects in front of every sequence, or None when the model's own
tokenizer adds none (SmolLM2); `stop_ids` are all ids that end a completion (EOS and
end-of-turn tokens); `decode` drops special tokens. Chat templates are rendered with jinja2 in a
sandbox exactly as `transformers.apply_chat_template` renders them.

`as_seqio_vocabulary(tokenizer)` wraps any of them as a `seqio.Vocabulary`.
`to_json_dict`/`from_json_dict` store a tokenizer inside a checkpoint's metadata.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import logging
import os
import re
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
  """A tokenizer file that cannot be used; the message names the file."""


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of rest_jax needs from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def bos_id(self) -> int | None: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    ...


def plain_chat_template(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
  """A template-free rendering: contents joined by newlines (for base models)."""
  del add_generation_prompt
  return "\n".join(m["content"] for m in messages)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens, with pad/bos/eos after them: the `tiny` model's vocabulary.

  Needs no file, so tests and the demo run anywhere. Ids 0..255 are bytes; 256 pad, 257 bos,
  258 eos. `vocab_size` is the model's embedding size, which may exceed the ids in use.
  """

  vocab_size: int = 384

  pad_id: int = 256
  bos_id: int = 257
  eos_id: int = 258

  def __post_init__(self):
    if self.vocab_size < 259:
      raise ValueError(f"ByteTokenizer needs vocab_size >= 259, got {self.vocab_size}")

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id,)

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def id_to_token(self, i: int) -> str:
    i = int(i)
    if 0 <= i < 256:
      return bytes([i]).decode("latin-1")
    return {self.pad_id: "<pad>", self.bos_id: "<bos>", self.eos_id: "<eos>"}.get(i, f"<{i}>")

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    return plain_chat_template(messages, add_generation_prompt)

  def to_json_dict(self) -> dict:
    return {"kind": "byte", "vocab_size": self.vocab_size}


# ----------------------------------------------------------------------------- chat templates

@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def render_chat_template(template: str, messages: Sequence[Mapping], *,
                         add_generation_prompt: bool = True,
                         special_tokens: Mapping[str, str | None] | None = None,
                         **kwargs) -> str:
  """Renders a Hugging Face chat template as `transformers.apply_chat_template(tokenize=False)`."""
  variables = {"tools": None, "documents": None, **dict(special_tokens or {}), **kwargs}
  return _compile_template(template).render(
      messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
      **variables)


# ----------------------------------------------------------------------------- shared base

# End-of-turn tokens of the families rest_jax knows: all of them stop a completion.
_END_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>",
               "<|end|>", "<eos>", "</s>", "<|eom_id|>")


class _VocabTokenizer:
  """What HF and SentencePiece tokenizers share: special ids, stops, chat template, storage."""

  def __init__(self, *, bos_token_id: int | None, eos_token_id: int | None,
               pad_token_id: int | None = None, unk_token_id: int | None = None,
               add_bos: bool = False, chat_template: str | None = None,
               extra_stop_ids: Sequence[int] = (), source: str = ""):
    self.source = source
    self.bos_token_id = bos_token_id
    self.eos_token_id = eos_token_id
    self.pad_token_id = pad_token_id
    self.unk_token_id = unk_token_id
    self.add_bos = bool(add_bos and bos_token_id is not None)
    self.chat_template = chat_template
    self._extra_stop_ids = tuple(int(i) for i in extra_stop_ids)
    if eos_token_id is None:
      raise TokenizerError(f"{source}: the tokenizer defines no end-of-sequence token")

  # Subclasses provide: vocab_size, id_to_token, token_to_id, encode, decode, _payload.
  @property
  def bos_id(self) -> int | None:
    return self.bos_token_id if self.add_bos else None

  @property
  def eos_id(self) -> int:
    return self.eos_token_id

  @property
  def pad_id(self) -> int:
    return self.pad_token_id if self.pad_token_id is not None else self.eos_token_id

  @property
  def stop_ids(self) -> tuple[int, ...]:
    ids = [self.eos_token_id, *self._extra_stop_ids]
    for tok in _END_TOKENS:
      i = self.token_to_id(tok)
      if i is not None and self.is_special(i):
        ids.append(i)
    return tuple(dict.fromkeys(int(i) for i in ids))

  def _token(self, i: int | None) -> str | None:
    return None if i is None else self.id_to_token(i)

  @property
  def special_tokens(self) -> dict[str, str | None]:
    return {"bos_token": self._token(self.bos_token_id), "eos_token": self._token(self.eos_token_id),
            "pad_token": self._token(self.pad_token_id), "unk_token": self._token(self.unk_token_id)}

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                          **kwargs) -> str:
    if not self.chat_template:
      return plain_chat_template(messages, add_generation_prompt)
    return render_chat_template(self.chat_template, messages,
                                add_generation_prompt=add_generation_prompt,
                                special_tokens=self.special_tokens, **kwargs)

  def _common_json(self) -> dict:
    return {"bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "unk_token_id": self.unk_token_id,
            "add_bos": self.add_bos, "chat_template": self.chat_template,
            "extra_stop_ids": list(self._extra_stop_ids), "source": self.source}

  def __repr__(self):
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, source={self.source!r})")


def _common_kwargs(d: Mapping) -> dict:
  return {k: d.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                                "chat_template", "source")} | {
      "add_bos": bool(d.get("add_bos")), "extra_stop_ids": d.get("extra_stop_ids") or ()}


# ----------------------------------------------------------------------------- HF tokenizers

class HFTokenizer(_VocabTokenizer):
  """A `tokenizers.Tokenizer` (what `tokenizer.json` holds) under the rest_jax protocol."""

  def __init__(self, tokenizer, **kw):
    self.tokenizer = tokenizer
    super().__init__(**kw)
    self._special = {int(i) for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def is_special(self, i: int) -> bool:
    return int(i) in self._special

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_token(self, i: int) -> str | None:
    return self.tokenizer.id_to_token(int(i))

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def to_json_dict(self) -> dict:
    return {"kind": "hf", "tokenizer_json": self.tokenizer.to_str(), **self._common_json()}

  @classmethod
  def from_file(cls, path: str | os.PathLike, config: Mapping | None = None) -> "HFTokenizer":
    """A `tokenizer.json`, with `tokenizer_config.json` (and `config.json`,
    `generation_config.json`, `chat_template.jinja`) from the same directory when present."""
    from tokenizers import Tokenizer as RustTokenizer
    path = str(path)
    try:
      tok = RustTokenizer.from_file(path)
    except Exception as e:
      raise TokenizerError(f"{path}: cannot read tokenizer.json: {e}") from e
    cfg = dict(config) if config is not None else _read_hf_tokenizer_config(os.path.dirname(path))

    def tid(name):
      value = cfg.get(name)
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        i = tok.token_to_id(value)
        if i is None:
          raise TokenizerError(f"{path}: {name} {value!r} is not in the vocabulary")
        return i
      return cfg.get(name + "_id")

    bos, eos = tid("bos_token"), tid("eos_token")
    # Whether the model wants BOS: the flag, else what the tokenizer's post-processor does.
    add_bos = cfg.get("add_bos_token")
    if add_bos is None and bos is not None:
      add_bos = tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
    return cls(tok, bos_token_id=bos, eos_token_id=eos, pad_token_id=tid("pad_token"),
               unk_token_id=tid("unk_token"), add_bos=bool(add_bos),
               chat_template=cfg.get("chat_template"),
               extra_stop_ids=cfg.get("extra_stop_ids") or (), source=path)

  @classmethod
  def from_json_dict(cls, d: Mapping) -> "HFTokenizer":
    from tokenizers import Tokenizer as RustTokenizer
    return cls(RustTokenizer.from_str(d["tokenizer_json"]), **_common_kwargs(d))

  def save_hf(self, out_dir: str | os.PathLike, model_max_length: int | None = None,
              tokenizer_class: str | None = None) -> list[str]:
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for transformers
    (always as `PreTrainedTokenizerFast`: the file is the whole tokenizer)."""
    del tokenizer_class
    out_dir = str(out_dir)
    tok = self.tokenizer
    if self.add_bos and tok.encode("a", add_special_tokens=True).ids[:1] != [self.bos_token_id]:
      # transformers adds special tokens through the post-processor: make it add our BOS.
      from tokenizers import Tokenizer as RustTokenizer
      from tokenizers import processors
      tok = RustTokenizer.from_str(tok.to_str())
      b = self.id_to_token(self.bos_token_id)
      tok.post_processor = processors.TemplateProcessing(
          single=f"{b}:0 $A:0", pair=f"{b}:0 $A:0 {b}:1 $B:1",
          special_tokens=[(b, self.bos_token_id)])
    _write_text(os.path.join(out_dir, "tokenizer.json"), tok.to_str())
    special = {k: v for k, v in self.special_tokens.items() if v is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "add_bos_token": self.add_bos, "add_eos_token": False,
              "clean_up_tokenization_spaces": False}
    if model_max_length:
      config["model_max_length"] = int(model_max_length)
    if self.chat_template:
      config["chat_template"] = self.chat_template
    _write_text(os.path.join(out_dir, "tokenizer_config.json"), json.dumps(config, indent=2))
    _write_text(os.path.join(out_dir, "special_tokens_map.json"), json.dumps(special, indent=2))
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise TokenizerError(f"{path}: cannot read JSON: {e}") from e


def _read_hf_tokenizer_config(directory: str) -> dict:
  """tokenizer_config.json merged with what config.json / generation_config.json add."""
  cfg: dict[str, Any] = {}
  model_cfg_path = os.path.join(directory, "config.json")
  if os.path.exists(model_cfg_path):
    model_cfg = _read_json(model_cfg_path)
    model_cfg = model_cfg.get("text_config", model_cfg) | {
        k: v for k, v in model_cfg.items() if k.endswith("token_id")}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
      value = model_cfg.get(key)
      if isinstance(value, list):
        cfg.setdefault("extra_stop_ids", []).extend(value[1:])
        value = value[0] if value else None
      if value is not None:
        cfg[key] = value
  gen_path = os.path.join(directory, "generation_config.json")
  if os.path.exists(gen_path):
    eos = _read_json(gen_path).get("eos_token_id")
    if isinstance(eos, list):
      cfg.setdefault("extra_stop_ids", []).extend(eos)
    elif eos is not None:
      cfg.setdefault("extra_stop_ids", []).append(eos)
  tc_path = os.path.join(directory, "tokenizer_config.json")
  if os.path.exists(tc_path):
    tc = _read_json(tc_path)
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
      if tc.get(key) is not None:
        cfg[key] = tc[key]
    for key in ("add_bos_token", "chat_template"):
      if key in tc:
        cfg[key] = tc[key]
  template = cfg.get("chat_template")
  if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
    named = {t.get("name"): t.get("template") for t in template}
    cfg["chat_template"] = named.get("default") or next(iter(named.values()), None)
  jinja_path = os.path.join(directory, "chat_template.jinja")
  if not cfg.get("chat_template") and os.path.exists(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      cfg["chat_template"] = f.read()
  return cfg


# ----------------------------------------------------------------------------- SentencePiece

class SentencePieceTokenizer(_VocabTokenizer):
  """A SentencePiece model under the rest_jax protocol.

  SentencePiece never turns control-token text into control ids, while chat templates write
  them as text (`<start_of_turn>`), so `encode` first splits the text at control tokens, as
  transformers does for its added special tokens.
  """

  def __init__(self, model_proto: bytes, **kw):
    import sentencepiece as spm
    self.model_proto = bytes(model_proto)
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.LoadFromSerializedProto(self.model_proto)
    except Exception as e:
      raise TokenizerError(f"{kw.get('source', '')}: invalid SentencePiece model: {e}") from e
    n = self.sp.get_piece_size()
    self._pieces = [self.sp.id_to_piece(i) for i in range(n)]
    self._ids = {p: i for i, p in enumerate(self._pieces)}
    self._control = np.zeros(n, bool)
    for i in range(n):
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        self._control[i] = True
    specials = sorted((self._pieces[i] for i in np.flatnonzero(self._control)), key=len,
                      reverse=True)
    self._special_re = (re.compile("|".join(re.escape(s) for s in specials)) if specials else None)
    super().__init__(**kw)

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def is_special(self, i: int) -> bool:
    return 0 <= int(i) < len(self._pieces) and bool(self._control[int(i)])

  def encode(self, text: str) -> list[int]:
    if self._special_re is None:
      return list(self.sp.encode(text))
    out: list[int] = []
    pos = 0
    for m in self._special_re.finditer(text):
      if m.start() > pos:
        out.extend(self.sp.encode(text[pos:m.start()]))
      out.append(self._ids[m.group()])
      pos = m.end()
    if pos < len(text):
      out.extend(self.sp.encode(text[pos:]))
    return out

  def decode(self, ids: Sequence[int]) -> str:
    n = len(self._pieces)
    keep = [int(i) for i in ids if 0 <= int(i) < n and not self._control[int(i)]]
    return self.sp.decode(keep)

  def id_to_token(self, i: int) -> str | None:
    i = int(i)
    return self._pieces[i] if 0 <= i < len(self._pieces) else None

  def token_to_id(self, token: str) -> int | None:
    return self._ids.get(token)

  def to_json_dict(self) -> dict:
    return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii"),
            **self._common_json()}

  @classmethod
  def from_json_dict(cls, d: Mapping) -> "SentencePieceTokenizer":
    return cls(base64.b64decode(d["model"]), **_common_kwargs(d))

  @classmethod
  def from_file(cls, path: str | os.PathLike, config: Mapping | None = None
                ) -> "SentencePieceTokenizer":
    """A SentencePiece `.model` file (with `tokenizer_config.json` beside it when present)."""
    path = str(path)
    try:
      with open(path, "rb") as f:
        proto = f.read()
    except OSError as e:
      raise TokenizerError(f"{path}: cannot read SentencePiece model: {e}") from e
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(proto)
    except Exception as e:
      raise TokenizerError(f"{path}: invalid SentencePiece model: {e}") from e
    cfg = dict(config) if config is not None else _read_hf_tokenizer_config(os.path.dirname(path))

    def tid(name, default):
      value = cfg.get(name)
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        i = sp.piece_to_id(value)
        return i if sp.id_to_piece(i) == value else default
      value = cfg.get(name + "_id", default)
      return None if value is None or value < 0 else value

    bos = tid("bos_token", sp.bos_id())
    add_bos = cfg.get("add_bos_token", True)
    return cls(proto, bos_token_id=bos, eos_token_id=tid("eos_token", sp.eos_id()),
               pad_token_id=tid("pad_token", sp.pad_id()), unk_token_id=tid("unk_token", sp.unk_id()),
               add_bos=bool(add_bos), chat_template=cfg.get("chat_template"),
               extra_stop_ids=cfg.get("extra_stop_ids") or (), source=path)

  def save_hf(self, out_dir: str | os.PathLike, model_max_length: int | None = None,
              tokenizer_class: str | None = None) -> list[str]:
    """`tokenizer.model` + `tokenizer_config.json` (transformers converts it when loading;
    `tokenizer_class` e.g. "GemmaTokenizer" tells it which conversion)."""
    out_dir = str(out_dir)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
      f.write(self.model_proto)
    special = {k: v for k, v in self.special_tokens.items() if v is not None}
    config = {**special, "add_bos_token": self.add_bos, "add_eos_token": False,
              "clean_up_tokenization_spaces": False}
    if tokenizer_class:
      config["tokenizer_class"] = tokenizer_class
    if model_max_length:
      config["model_max_length"] = int(model_max_length)
    if self.chat_template:
      config["chat_template"] = self.chat_template
    _write_text(os.path.join(out_dir, "tokenizer_config.json"), json.dumps(config, indent=2))
    _write_text(os.path.join(out_dir, "special_tokens_map.json"), json.dumps(special, indent=2))
    return ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


# ----------------------------------------------------------------------------- GGUF metadata

# tokenizer.ggml.pre -> the pre-tokenizer split of byte-level BPE vocabularies (llama.cpp's).
_GPT2_SPLIT = None  # tokenizers' ByteLevel(use_regex=True) is GPT-2's split.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    "default": _GPT2_SPLIT, "gpt2": _GPT2_SPLIT, "gpt-2": _GPT2_SPLIT, "smollm": _GPT2_SPLIT,
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_BYTE, _GGUF_UNKNOWN = 3, 4, 6, 2


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


def from_gguf_metadata(meta: Mapping[str, Any], source: str = "") -> _VocabTokenizer:
  """The tokenizer a GGUF's `tokenizer.*` metadata describes."""
  kind = meta.get("tokenizer.ggml.model")
  tokens = meta.get("tokenizer.ggml.tokens")
  if not tokens:
    raise TokenizerError(f"{source}: GGUF metadata has no tokenizer.ggml.tokens")
  types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  if len(types) != len(tokens):
    raise TokenizerError(f"{source}: {len(tokens)} tokens but {len(types)} token types")

  def ident(key):
    value = meta.get(f"tokenizer.ggml.{key}")
    if value is None:
      return None
    if not 0 <= int(value) < len(tokens):
      raise TokenizerError(f"{source}: tokenizer.ggml.{key}={value} is outside the "
                           f"{len(tokens)}-token vocabulary")
    return int(value)

  extra_stops = [i for i in (ident("eot_token_id"), ident("eom_token_id")) if i is not None]
  common = dict(bos_token_id=ident("bos_token_id"), eos_token_id=ident("eos_token_id"),
                pad_token_id=ident("padding_token_id"), unk_token_id=ident("unknown_token_id"),
                chat_template=meta.get("tokenizer.chat_template"), extra_stop_ids=extra_stops,
                source=source)
  if kind == "gpt2":
    return HFTokenizer(_byte_level_bpe(meta, tokens, types, source),
                       add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)), **common)
  if kind == "llama":
    return SentencePieceTokenizer(_sentencepiece_proto(meta, tokens, types, common, source),
                                  add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                                  **common)
  raise TokenizerError(f"{source}: GGUF tokenizer model {kind!r} is not supported "
                       "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")


def _byte_level_bpe(meta, tokens, types, source):
  from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
  from tokenizers import Tokenizer as RustTokenizer
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())

  def spell(t):
    return t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))

  vocab = {}
  for i, t in enumerate(tokens):
    vocab.setdefault(t if types[i] == _GGUF_CONTROL else spell(t), i)
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
  if any(len(m) != 2 for m in merges):
    raise TokenizerError(f"{source}: malformed tokenizer.ggml.merges")
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE_SPLITS:
    log.warning("%s: unknown tokenizer.ggml.pre %r; using GPT-2's pre-tokenizer", source, pre)
  split = _PRE_SPLITS.get(pre)
  tok = RustTokenizer(models.BPE(vocab, merges, ignore_merges=split is _LLAMA3_SPLIT))
  if split is None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if ty == _GGUF_CONTROL]
  user = [AddedToken(t, special=False, normalized=False)
          for t, ty in zip(tokens, types) if ty == _GGUF_USER_DEFINED]
  if control:
    tok.add_special_tokens(control)
  if user:
    tok.add_tokens(user)
  return tok


def _sentencepiece_proto(meta, tokens, types, common, source) -> bytes:
  """A BPE SentencePiece ModelProto holding the GGUF's pieces, scores and types."""
  from sentencepiece import sentencepiece_model_pb2 as pb
  scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
  m = pb.ModelProto()
  ts = m.trainer_spec
  ts.model_type = pb.TrainerSpec.BPE
  ts.vocab_size = len(tokens)
  ts.byte_fallback = any(t == _GGUF_BYTE for t in types)
  unk = common["unk_token_id"]
  if unk is None:
    unk = next((i for i, t in enumerate(types) if t == _GGUF_UNKNOWN), None)
  if unk is None:
    raise TokenizerError(f"{source}: a SentencePiece vocabulary needs an unknown token")
  for field in ("unk", "bos", "eos", "pad"):
    i = unk if field == "unk" else common[f"{field}_token_id"]
    setattr(ts, f"{field}_id", -1 if i is None else i)
    if i is not None:
      setattr(ts, f"{field}_piece", tokens[i])
  ns = m.normalizer_spec
  ns.name = "identity"
  ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  seen = set()
  for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
    if ty == _GGUF_USER_DEFINED:
      t = t.replace(" ", "\u2581")  # llama.cpp stores these with real spaces.
    if i == unk:
      ty = _GGUF_UNKNOWN
    elif ty == _GGUF_UNKNOWN:
      ty = _GGUF_CONTROL
    if ty not in (1, 2, 3, 4, 5, 6):
      ty = 1
    if t in seen:  # SentencePiece refuses duplicates: keep the first, park the copy.
      t, ty = f"<gguf_duplicate_{i}>", 5
    seen.add(t)
    p = m.pieces.add()
    p.piece, p.score, p.type = t, float(s), int(ty)
  return m.SerializeToString()


# ----------------------------------------------------------------------------- entry points

def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """A tokenizer from a `tokenizer.json`, a SentencePiece `.model`, a `.gguf`, or a directory
  holding `tokenizer.json` or `tokenizer.model`."""
  path = str(path)
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model"):
      if os.path.exists(os.path.join(path, name)):
        return load_tokenizer(os.path.join(path, name))
    raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
  if path.endswith(".gguf"):
    from rest_jax.models.gguf_import import GGUFModel
    return from_gguf_metadata(GGUFModel(path).tokenizer_metadata(), path)
  if path.endswith(".json"):
    return HFTokenizer.from_file(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer.from_file(path)
  raise TokenizerError(f"{path}: not a tokenizer file (.json, .model, .gguf or a directory)")


def to_json_dict(tokenizer) -> dict:
  if not hasattr(tokenizer, "to_json_dict"):
    raise TypeError(f"{type(tokenizer).__name__} cannot be stored (no to_json_dict)")
  return tokenizer.to_json_dict()


def from_json_dict(d: Mapping) -> Tokenizer:
  kind = d.get("kind")
  if kind == "byte":
    return ByteTokenizer(vocab_size=int(d["vocab_size"]))
  if kind == "hf":
    return HFTokenizer.from_json_dict(d)
  if kind == "sentencepiece":
    return SentencePieceTokenizer.from_json_dict(d)
  raise TokenizerError(f"unknown stored tokenizer kind {kind!r}")


def stop_ids(tokenizer) -> tuple[int, ...]:
  """Every id that ends a completion (`tokenizer.stop_ids`, else just its EOS)."""
  ids = getattr(tokenizer, "stop_ids", None)
  return tuple(ids) if ids else (int(tokenizer.eos_id),)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
  """Each id's token as the vocabulary spells it (`Ġworld`, `▁the`, `<end_of_turn>`)."""
  to_token = getattr(tokenizer, "id_to_token", None)
  if to_token is None:
    return [tokenizer.decode([i]) for i in ids]
  return [to_token(int(i)) or "" for i in ids]


def as_seqio_vocabulary(tokenizer: Tokenizer):
  """Wraps any `Tokenizer` as a `seqio.Vocabulary`, so seqio tasks can use it."""
  import seqio  # heavy (TensorFlow): imported only where seqio is used.
  import tensorflow as tf

  class _Vocabulary(seqio.Vocabulary):

    def __init__(self):
      super().__init__(extra_ids=0)
      self.tokenizer = tokenizer

    @property
    def eos_id(self):
      return tokenizer.eos_id

    @property
    def pad_id(self):
      return tokenizer.pad_id

    @property
    def unk_id(self):
      return getattr(tokenizer, "unk_token_id", None)

    @property
    def _base_vocab_size(self):
      return tokenizer.vocab_size

    def _encode(self, s):
      return tokenizer.encode(s)

    def _decode(self, ids):
      return tokenizer.decode([int(i) for i in ids])

    def _encode_tf(self, s):
      def enc(x):
        return np.asarray(tokenizer.encode(x.numpy().decode("utf-8")), np.int32)

      ids = tf.py_function(enc, [s], tf.int32)
      ids.set_shape([None])
      return ids

    def _decode_tf(self, ids):
      def dec(x):
        return tokenizer.decode(x.numpy().tolist()).encode("utf-8")

      text = tf.py_function(dec, [ids], tf.string)
      text.set_shape([])
      return text

    def __eq__(self, other):
      return isinstance(other, _Vocabulary) and other.tokenizer is self.tokenizer

    def __hash__(self):
      return id(tokenizer)

  return _Vocabulary()
