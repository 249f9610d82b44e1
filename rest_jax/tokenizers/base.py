"""The `Tokenizer` protocol, the byte tokenizer, chat templates, and what the vocabulary
tokenizers share."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


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

  def _save_hf_config(self, out_dir: str, model_max_length: int | None,
                      tokenizer_class: str | None) -> list[str]:
    """Writes transformers' `tokenizer_config.json` and `special_tokens_map.json`."""
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
    return ["tokenizer_config.json", "special_tokens_map.json"]

  def __repr__(self):
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, source={self.source!r})")


def _common_kwargs(d: Mapping) -> dict:
  return {k: d.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                                "chat_template", "source")} | {
      "add_bos": bool(d.get("add_bos")), "extra_stop_ids": d.get("extra_stop_ids") or ()}


# ----------------------------------------------------------------------------- files

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
