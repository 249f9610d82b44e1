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

import os
from typing import Mapping, Sequence

import numpy as np

from rest_jax.tokenizers.base import (ByteTokenizer, Tokenizer, TokenizerError,
                                      plain_chat_template, render_chat_template)
from rest_jax.tokenizers.gguf import _bytes_to_unicode, from_gguf_metadata
from rest_jax.tokenizers.gguf_file import GGUFFile, GGUFFormatError
from rest_jax.tokenizers.hf import HFTokenizer
from rest_jax.tokenizers.spm import SentencePieceTokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "TokenizerError",
           "as_seqio_vocabulary", "from_gguf_metadata", "from_json_dict", "load_tokenizer",
           "plain_chat_template", "render_chat_template", "stop_ids", "to_json_dict",
           "token_strings", "_bytes_to_unicode"]


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
    try:
      metadata = GGUFFile(path).tokenizer_metadata()
    except GGUFFormatError as e:
      raise TokenizerError(str(e)) from e
    return from_gguf_metadata(metadata, path)
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
