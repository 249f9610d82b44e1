"""Tokenizers built from a GGUF file's `tokenizer.ggml.*` metadata."""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

from rest_jax.tokenizers.base import TokenizerError, _VocabTokenizer
from rest_jax.tokenizers.hf import HFTokenizer
from rest_jax.tokenizers.spm import SentencePieceTokenizer

log = logging.getLogger(__name__)


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
