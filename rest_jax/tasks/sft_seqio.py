"""seqio's side of SFT packing: the feature converter and the tf.data pipeline around it.

Imported only where TensorFlow is available; `sft.pack_sft_examples` picks it by default.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf


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


def _ragged(seqs: Sequence[Sequence[int]]) -> tf.RaggedTensor:
  lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
  flat = np.fromiter((t for s in seqs for t in s), np.int32, count=int(lengths.sum()))
  return tf.RaggedTensor.from_row_lengths(flat, lengths)


def pack_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
              pad_id: int, seq_len: int, pack: bool) -> dict[str, np.ndarray]:
  """Packed (or padded) rows of prompt + completion, through `CompletionFeatureConverter`."""
  ds = tf.data.Dataset.from_tensor_slices({
      "inputs": _ragged(prompts), "targets": _ragged(completions),
  }).map(lambda ex: {k: tf.ensure_shape(v, [None]) for k, v in ex.items()})
  converter = CompletionFeatureConverter(pad_id=pad_id, pack=pack, packed_length=seq_len)
  lengths = {"inputs": max(len(p) for p in prompts),
             "targets": max(len(c) for c in completions)}
  rows = list(converter(ds, lengths).as_numpy_iterator())
  arrays = {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in rows[0]}
  if not pack:  # one example per row: segment 1 where real, positions 0..n-1
    n = np.array([len(p) + len(c) - 1 for p, c in zip(prompts, completions)])
    pos = np.arange(seq_len)[None, :]
    arrays["decoder_segment_ids"] = (pos < n[:, None]).astype(np.int32)
    arrays["decoder_positions"] = np.where(pos < n[:, None], pos, 0).astype(np.int32)
  return arrays
