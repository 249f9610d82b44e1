"""`SentencePieceTokenizer`: a SentencePiece model under the rest_jax protocol."""

from __future__ import annotations

import base64
import os
import re
from typing import Mapping, Sequence

import numpy as np

from rest_jax.tokenizers.base import (TokenizerError, _VocabTokenizer, _common_kwargs,
                                      _read_hf_tokenizer_config)


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
    return ["tokenizer.model", *self._save_hf_config(out_dir, model_max_length, tokenizer_class)]
