"""`HFTokenizer`: a Hugging Face `tokenizers` (Rust) tokenizer under the rest_jax protocol."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from rest_jax.tokenizers.base import (TokenizerError, _VocabTokenizer, _common_kwargs,
                                      _read_hf_tokenizer_config, _write_text)


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
    return ["tokenizer.json", *self._save_hf_config(out_dir, model_max_length,
                                                     "PreTrainedTokenizerFast")]
