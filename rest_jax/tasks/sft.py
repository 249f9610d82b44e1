"""Fine-tuning data from (prompt, completion) pairs: tokenise, mask, pack, with seqio.

Token convention, shared with the sampler: a prompt is ``[bos] + encode(prompt_text)``
(no BOS for tokenizers without one, and none added when the text already encodes to one),
a completion is ``encode(completion_text) + [eos]``. The model reads the sequence
``prompt + completion`` shifted by one, exactly as the sampler fed it::

  tokens                = [bos, p1, p2, c1, c2, eos]
  decoder_input_tokens  = [bos, p1, p2, c1, c2]
  decoder_target_tokens = [p1,  p2, c1, c2, eos]
  decoder_loss_weights  = [0,   0,  1,  1,  1  ]     (1 on every completion token and EOS)

Packing uses seqio's feature-converter machinery (`sft_seqio.CompletionFeatureConverter`, a
`seqio.FeatureConverter`, packs with `seqio.utils.trim_and_pack_dataset`), with two fixes
for vocabularies that are not t5x's:

* seqio's packer treats the value 0 as padding and cuts a sequence short at each 0 it
  holds; token 0 is a real token here (a byte, or "!" / "<unk>" in real vocabularies).
  Every packed value is therefore stored plus one and restored after packing.
* seqio's stock `PrefixLMFeatureConverter` prepends a constant `bos_id` to the shifted
  sequence. That matches the sampler for tokenizers with a BOS (the tests check the two
  agree), but not for tokenizers without one; shifting the full sequence here is right in
  both cases.

Where TensorFlow is not installed (a GPU machine with jax alone), `backend="numpy"` packs
with the same greedy algorithm in numpy; a test checks the two produce identical arrays.

Padding positions have segment id 0, loss weight 0 and token `tokenizer.pad_id`: detect
padding by `decoder_segment_ids == 0`, never by token value.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Sequence

import numpy as np

from rest_jax.tasks.kept import SFTExample

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")


def encode_prompt(tokenizer, text: str) -> list[int]:
  """Prompt token ids, with the tokenizer's BOS in front when it has one."""
  ids = list(tokenizer.encode(text))
  bos = tokenizer.bos_id
  if bos is not None and (not ids or ids[0] != bos):
    ids = [bos] + ids
  if not ids:
    raise ValueError("an empty prompt with a tokenizer that has no BOS gives the model nothing "
                     "to read; prompts must encode to at least one token")
  return ids


def encode_completion(tokenizer, text: str, completion_ids: Sequence[int] | None = None
                      ) -> list[int]:
  """Completion token ids ending with exactly one EOS (the model learns to stop)."""
  ids = list(completion_ids) if completion_ids is not None else list(tokenizer.encode(text))
  if ids and ids[-1] == tokenizer.eos_id:
    ids = ids[:-1]
  return ids + [tokenizer.eos_id]


@dataclasses.dataclass
class PackedSFT:
  """Packed fine-tuning rows, materialised in numpy.

  Attributes:
    arrays: the `FEATURES`, each [num_rows, seq_len]; decoder_loss_weights is float32 and
      holds each example's weight on its completion tokens.
    seq_len: the row length.
    example_order: example indices in the order they were packed (segments in row-major
      order of (row, segment id) are these examples, one each).
    num_examples: examples packed.
    dropped: indices of examples longer than seq_len, left out (overlong="drop").
  """

  arrays: dict[str, np.ndarray]
  seq_len: int
  example_order: list[int]
  num_examples: int
  dropped: list[int]

  @property
  def num_rows(self) -> int:
    return int(self.arrays["decoder_target_tokens"].shape[0])

  @property
  def num_loss_tokens(self) -> int:
    return int((self.arrays["decoder_loss_weights"] > 0).sum())

  def segments(self) -> dict[int, tuple[int, int]]:
    """example index -> (row, segment id) where that example lies."""
    out, k = {}, 0
    seg = self.arrays["decoder_segment_ids"]
    for row in range(seg.shape[0]):
      for s in range(1, int(seg[row].max()) + 1):
        out[self.example_order[k]] = (row, s)
        k += 1
    return out


def _tokenize(examples: Sequence[SFTExample], tokenizer):
  prompts, completions = [], []
  for i, ex in enumerate(examples):
    if not isinstance(ex, SFTExample):
      raise TypeError(f"example {i}: expected an SFTExample, got {type(ex).__name__}")
    prompts.append(encode_prompt(tokenizer, ex.prompt))
    completions.append(encode_completion(tokenizer, ex.completion, ex.completion_ids))
  return prompts, completions


def pack_sft_examples(examples: Sequence[SFTExample],
                      tokenizer,
                      seq_len: int,
                      *,
                      pack: bool = True,
                      shuffle_seed: int | None = 0,
                      overlong: str = "drop",
                      backend: str = "auto") -> PackedSFT:
  """Tokenises, masks and packs SFT examples into fixed-length rows.

  Args:
    examples: the (prompt, completion, weight) examples.
    tokenizer: any `rest_jax.tokenizers.Tokenizer`.
    seq_len: the row length.
    pack: several examples per row (else one per row).
    shuffle_seed: examples are shuffled with this seed before packing, so rows mix prompts
      (kept.jsonl lists the samples of one prompt together); None keeps the given order.
    overlong: an example whose prompt + completion needs more than seq_len + 1 tokens is
      "drop"ped (counted in `dropped` and logged) or raises ("error"). Never truncated.
    backend: "seqio" (its feature converter), "numpy" (same rows, no TensorFlow), or
      "auto" (seqio when TensorFlow and seqio import).
  """
  if overlong not in ("drop", "error"):
    raise ValueError(f"overlong must be 'drop' or 'error', got {overlong!r}")
  if seq_len < 2:
    raise ValueError(f"seq_len must be >= 2, got {seq_len}")
  prompts, completions = _tokenize(examples, tokenizer)
  order = list(range(len(examples)))
  if shuffle_seed is not None:
    random.Random(shuffle_seed).shuffle(order)
  kept, dropped = [], []
  for i in order:
    # The model reads n - 1 positions of an n-token sequence.
    (kept if len(prompts[i]) + len(completions[i]) - 1 <= seq_len else dropped).append(i)
  if dropped:
    msg = (f"{len(dropped)} of {len(examples)} SFT examples need more than seq_len={seq_len} "
           f"positions (first: example {min(dropped)})")
    if overlong == "error":
      raise ValueError(msg)
    logging.warning("%s; they are left out", msg)
  if not kept:
    raise ValueError(f"no SFT example fits in seq_len={seq_len} (of {len(examples)} examples)")

  if backend == "auto":
    backend = "seqio" if _seqio_available() else "numpy"
  if backend == "seqio":
    from rest_jax.tasks import sft_seqio
    arrays = sft_seqio.pack_rows([prompts[i] for i in kept], [completions[i] for i in kept],
                                 tokenizer.pad_id, seq_len, pack)
  elif backend == "numpy":
    arrays = pack_rows_numpy([prompts[i] for i in kept], [completions[i] for i in kept],
                             tokenizer.pad_id, seq_len, pack)
  else:
    raise ValueError(f"backend must be 'auto', 'seqio' or 'numpy', got {backend!r}")
  arrays["decoder_loss_weights"] = arrays["decoder_loss_weights"].astype(np.float32)

  packed = PackedSFT(arrays=arrays, seq_len=seq_len, example_order=kept,
                     num_examples=len(kept), dropped=sorted(dropped))
  _apply_weights_and_check(packed, examples, prompts, completions)
  return packed


def _seqio_available() -> bool:
  import importlib.util
  return all(importlib.util.find_spec(m) is not None for m in ("seqio", "tensorflow"))


def pack_rows_numpy(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    pad_id: int, seq_len: int, pack: bool) -> dict[str, np.ndarray]:
  """seqio's packing in numpy: same rows, segment ids and positions.

  seqio packs batches of `seq_len` examples; within a batch each example joins the current
  row if it fits, else the row is closed and a new one started; a batch's last row is closed.
  """
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  rows: list[list[int]] = []  # indices of the examples in each row
  if pack:
    for b in range(0, len(seqs), seq_len):
      current, used = [], 0
      for i in range(b, min(b + seq_len, len(seqs))):
        n = len(seqs[i]) - 1
        if current and used + n > seq_len:
          rows.append(current)
          current, used = [], 0
        current.append(i)
        used += n
      if current:
        rows.append(current)
  else:
    rows = [[i] for i in range(len(seqs))]
  shape = (len(rows), seq_len)
  out = {"decoder_input_tokens": np.full(shape, pad_id, np.int32),
         "decoder_target_tokens": np.full(shape, pad_id, np.int32),
         "decoder_loss_weights": np.zeros(shape, np.int32),
         "decoder_segment_ids": np.zeros(shape, np.int32),
         "decoder_positions": np.zeros(shape, np.int32)}
  for r, members in enumerate(rows):
    at = 0
    for s, i in enumerate(members, 1):
      seq, n = seqs[i], len(seqs[i]) - 1
      out["decoder_input_tokens"][r, at:at + n] = seq[:-1]
      out["decoder_target_tokens"][r, at:at + n] = seq[1:]
      out["decoder_loss_weights"][r, at:at + n] = np.arange(n) >= len(prompts[i]) - 1
      out["decoder_segment_ids"][r, at:at + n] = s
      out["decoder_positions"][r, at:at + n] = np.arange(n)
      at += n
  return out


def _apply_weights_and_check(packed: PackedSFT, examples, prompts, completions):
  """Multiplies example weights into the loss weights, checking every segment's content.

  seqio packs examples in order, so the k-th segment (row-major) is the k-th packed example;
  comparing each segment with its example's tokens proves it (and that nothing was cut).
  """
  a = packed.arrays
  segs = packed.segments()
  if len(segs) != packed.num_examples:
    raise AssertionError(f"packing produced {len(segs)} segments for {packed.num_examples} "
                         "examples")
  for i, (row, s) in segs.items():
    mask = a["decoder_segment_ids"][row] == s
    want = np.asarray(prompts[i] + completions[i], np.int32)
    if not (np.array_equal(a["decoder_target_tokens"][row][mask], want[1:]) and
            np.array_equal(a["decoder_input_tokens"][row][mask], want[:-1])):
      raise AssertionError(f"packed segment ({row}, {s}) does not hold example {i}")
    a["decoder_loss_weights"][row][mask] *= np.float32(examples[i].weight)
