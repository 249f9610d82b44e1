"""Tokenizers: one small protocol, the byte tokenizer of the tiny model, and a seqio adapter.

Every tokenizer in rest_jax answers the `Tokenizer` protocol, so tasks, the sampler and the
trainer never care where the vocabulary came from (GGUF metadata, `tokenizer.json`,
SentencePiece, or the built-in byte vocabulary).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


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

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    return plain_chat_template(messages, add_generation_prompt)


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
      return None

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
