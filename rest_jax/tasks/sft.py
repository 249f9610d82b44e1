"""Fine-tuning data from (prompt, completion) pairs: tokenise, mask, pack, with seqio.

Token convention, shared with the sampler: a prompt is ``[bos] + encode(prompt_text)``
(no BOS for tokenizers without one, and none added when the text already encodes to one),
a completion is ``encode(completion_text) + [eos]``. The model reads the sequence
``prompt + completion`` shifted by one, exactly as the sampler fed it::

  tokens                = [bos, p1, p2, c1, c2, eos]
  decoder_input_tokens  = [bos, p1, p2, c1, c2]
  decoder_target_tokens = [p1,  p2, c1, c2, eos]
  decoder_loss_weights  = [0,   0,  1,  1,  1  ]     (1 on every completion token and EOS)

Packing uses seqio's feature-converter machinery (`CompletionFeatureConverter`, a
`seqio.FeatureConverter`, packs with `seqio.utils.trim_and_pack_dataset`), with two fixes
for vocabularies that are not t5x's:

* seqio's packer treats the value 0 as padding and cuts a sequence short at each 0 it
  holds; token 0 is a real token here (a byte, or "!" / "<unk>" in real vocabularies).
  Every packed value is therefore stored plus one and restored after packing.
* seqio's stock `PrefixLMFeatureConverter` prepends a constant `bos_id` to the shifted
  sequence. That matches the sampler for tokenizers with a BOS (the tests check the two
  agree), but not for tokenizers without one; shifting the full sequence here is right in
  both cases.

Padding positions have segment id 0, loss weight 0 and token `tokenizer.pad_id`: detect
padding by `decoder_segment_ids == 0`, never by token value.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

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


class CompletionFeatureConverter(seqio.FeatureConverter):
  """Decoder-only features with the loss on the completion ("targets") tokens only.

  Task features: "inputs" (prompt ids, BOS included if any) and "targets" (completion ids,
  EOS included). Model features, t5x's decoder naming: decoder_input_tokens,
  decoder_target_tokens, decoder_loss_weights, and with packing decoder_segment_ids and
  decoder_positions. As with `seqio.PrefixLMFeatureConverter`, the model length is
  inputs + targets length, unless `packed_length` fixes it.

  Args:
    pad_id: the token written at padding positions.
    pack: pack several examples per row (else one example per row, padded).
    packed_length: the model sequence length, whatever the task feature lengths.
  """

  TASK_FEATURES = {
      "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {
      "decoder_segment_ids": tf.int32,
      "decoder_positions": tf.int32,
  }

  def __init__(self, pad_id: int, pack: bool = True, packed_length: int | None = None,
               **kwargs):
    self._pad_id = int(pad_id)
    self._packed_length = packed_length
    super().__init__(pack=pack, **kwargs)

  def _shift_and_mask(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    inputs, targets = ex["inputs"], ex["targets"]
    tokens = tf.concat([inputs, targets], axis=0)
    # Target position t predicts tokens[t + 1]; completions start at tokens[len(inputs)].
    completion = tf.range(tf.size(tokens) - 1) >= tf.size(inputs) - 1
    # +1: seqio's packer reads 0 as padding (see the module doc).
    return {
        "decoder_input_tokens": tokens[:-1] + 1,
        "decoder_target_tokens": tokens[1:] + 1,
        "decoder_loss_weights": tf.cast(completion, tf.int32) + 1,
    }

  def _restore(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    if self.pack:
      segment_ids = ex["decoder_target_tokens_segment_ids"]
      real = segment_ids > 0
    else:
      real = ex["decoder_target_tokens"] > 0
    pad = tf.fill(tf.shape(real), self._pad_id)
    out = {
        "decoder_input_tokens": tf.where(real, ex["decoder_input_tokens"] - 1, pad),
        "decoder_target_tokens": tf.where(real, ex["decoder_target_tokens"] - 1, pad),
        "decoder_loss_weights": tf.where(real, ex["decoder_loss_weights"] - 1,
                                         tf.zeros_like(pad)),
    }
    if self.pack:
      out["decoder_segment_ids"] = segment_ids
      out["decoder_positions"] = ex["decoder_target_tokens_positions"]
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_target_tokens"]
    ds = ds.map(self._shift_and_mask, num_parallel_calls=tf.data.AUTOTUNE)
    ds = self._pack_or_pad(ds, {k: length for k in self.MODEL_FEATURES})
    return ds.map(self._restore, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    length = self._packed_length or (task_feature_lengths["inputs"] +
                                     task_feature_lengths["targets"])
    features = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack
                                            else [])
    return {k: length for k in features}


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


def _ragged(seqs: Sequence[Sequence[int]]) -> tf.RaggedTensor:
  lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
  flat = np.fromiter((t for s in seqs for t in s), np.int32, count=int(lengths.sum()))
  return tf.RaggedTensor.from_row_lengths(flat, lengths)


def pack_sft_examples(examples: Sequence[SFTExample],
                      tokenizer,
                      seq_len: int,
                      *,
                      pack: bool = True,
                      shuffle_seed: int | None = 0,
                      overlong: str = "drop") -> PackedSFT:
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

  ds = tf.data.Dataset.from_tensor_slices({
      "inputs": _ragged([prompts[i] for i in kept]),
      "targets": _ragged([completions[i] for i in kept]),
  }).map(lambda ex: {k: tf.ensure_shape(v, [None]) for k, v in ex.items()})
  converter = CompletionFeatureConverter(pad_id=tokenizer.pad_id, pack=pack, packed_length=seq_len)
  lengths = {"inputs": max(len(prompts[i]) for i in kept),
             "targets": max(len(completions[i]) for i in kept)}
  rows = list(converter(ds, lengths).as_numpy_iterator())
  arrays = {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in rows[0]}
  if not pack:  # one example per row: segment 1 where real, positions 0..n-1
    n = np.array([len(prompts[i]) + len(completions[i]) - 1 for i in kept])
    pos = np.arange(seq_len)[None, :]
    arrays["decoder_segment_ids"] = (pos < n[:, None]).astype(np.int32)
    arrays["decoder_positions"] = np.where(pos < n[:, None], pos, 0).astype(np.int32)
  arrays["decoder_loss_weights"] = arrays["decoder_loss_weights"].astype(np.float32)

  packed = PackedSFT(arrays=arrays, seq_len=seq_len, example_order=kept,
                     num_examples=len(kept), dropped=sorted(dropped))
  _apply_weights_and_check(packed, examples, prompts, completions)
  return packed


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
