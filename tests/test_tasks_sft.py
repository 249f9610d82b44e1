"""The SFT data path: loss mask on completion tokens only, lossless packing, resumable batches,
and the seqio registrations that give the same data."""

import dataclasses
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rest_jax.tasks import TEST, TRAIN, SFTExample, get_task, read_kept, sft_examples_from_kept
from rest_jax.tasks import seqio_tasks
from rest_jax.tasks import sft
from rest_jax.tasks import sft_seqio
from rest_jax.tasks.sft_iterator import SFTIterator
from rest_jax.tokenizers import ByteTokenizer, as_seqio_vocabulary

TOK = ByteTokenizer()  # pad 256, bos 257, eos 258


@dataclasses.dataclass(frozen=True)
class NoBosTokenizer(ByteTokenizer):
  bos_id: int | None = None


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


# Token 0 (a NUL byte) inside prompts and completions: seqio's packer reads 0 as padding.
EXAMPLES = [
    SFTExample("Q: 1+1?\nA:", " 2", 1.0),
    SFTExample("x\x00y", "z\x00w", 0.5),
    SFTExample("héllo wörld, what is 12 * 3?", " 36 — done", 2.0),
    SFTExample("a", "", 1.0),  # an empty completion still teaches EOS
    SFTExample("prompt " * 5, "completion " * 4, 1.0),
]


def _segments(packed):
  """example index -> (row, boolean mask of its positions)."""
  seg = packed.arrays["decoder_segment_ids"]
  return {i: (row, seg[row] == s) for i, (row, s) in packed.segments().items()}


def test_loss_mask_covers_exactly_the_completion_tokens():
  packed = sft.pack_sft_examples(EXAMPLES, TOK, seq_len=96, shuffle_seed=None)
  assert packed.dropped == []
  a = packed.arrays
  for i, (row, mask) in _segments(packed).items():
    ex = EXAMPLES[i]
    prompt_ids = [TOK.bos_id] + TOK.encode(ex.prompt)
    completion_ids = TOK.encode(ex.completion) + [TOK.eos_id]
    targets, weights = a["decoder_target_tokens"][row][mask], a["decoder_loss_weights"][row][mask]
    assert targets[weights > 0].tolist() == completion_ids
    assert targets[weights == 0].tolist() == prompt_ids[1:]
    assert set(weights[weights > 0].tolist()) == {ex.weight}
    assert a["decoder_input_tokens"][row][mask].tolist() == (prompt_ids + completion_ids)[:-1]
    assert a["decoder_positions"][row][mask].tolist() == list(range(mask.sum()))
  padding = a["decoder_segment_ids"] == 0
  assert (a["decoder_loss_weights"][padding] == 0).all()
  assert (a["decoder_target_tokens"][padding] == TOK.pad_id).all()
  assert packed.num_loss_tokens == sum(len(TOK.encode(e.completion)) + 1 for e in EXAMPLES)


def test_packing_loses_no_tokens():
  examples = get_task("arithmetic", num_train=60, num_test=1).human_sft_examples()
  examples += EXAMPLES
  packed = sft.pack_sft_examples(examples, TOK, seq_len=192, shuffle_seed=3)
  a = packed.arrays
  assert packed.dropped == [] and packed.num_examples == len(examples)
  assert packed.num_rows < len(examples)  # several examples share rows
  want_total = sum(len(sft.encode_prompt(TOK, e.prompt)) +
                   len(sft.encode_completion(TOK, e.completion)) - 1 for e in examples)
  assert int((a["decoder_segment_ids"] > 0).sum()) == want_total
  rebuilt = {}
  for i, (row, mask) in _segments(packed).items():
    seq = a["decoder_input_tokens"][row][mask].tolist() + [a["decoder_target_tokens"][row][mask][-1]]
    rebuilt[i] = seq
  for i, e in enumerate(examples):
    assert rebuilt[i] == sft.encode_prompt(TOK, e.prompt) + sft.encode_completion(TOK, e.completion)
  for k in sft.FEATURES:
    assert a[k].shape == (packed.num_rows, 192)


def test_matches_seqio_prefix_lm_converter_for_tokenizers_with_bos():
  # Without token 0 in the data, seqio's stock converter (BOS as its bos_id) must agree.
  examples = [e for e in EXAMPLES if "\x00" not in e.prompt + e.completion]
  inputs = [TOK.encode(e.prompt) for e in examples]
  targets = [TOK.encode(e.completion) + [TOK.eos_id] for e in examples]
  lengths = {"inputs": 48, "targets": 48}

  def dataset(prompts):
    return tf.data.Dataset.from_generator(
        lambda: ({"inputs": np.array(p, np.int32), "targets": np.array(t, np.int32)}
                 for p, t in zip(prompts, targets)),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                          "targets": tf.TensorSpec([None], tf.int32)})

  ref = list(seqio.PrefixLMFeatureConverter(pack=True, bos_id=TOK.bos_id)(
      dataset(inputs), lengths).as_numpy_iterator())
  ours = list(sft_seqio.CompletionFeatureConverter(pad_id=TOK.pad_id, pack=True)(
      dataset([[TOK.bos_id] + p for p in inputs]), lengths).as_numpy_iterator())
  assert len(ref) == len(ours)
  for r, o in zip(ref, ours):
    real = r["decoder_segment_ids"] > 0
    for k in ("decoder_segment_ids", "decoder_positions"):
      np.testing.assert_array_equal(r[k], o[k])
    for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
      np.testing.assert_array_equal(r[k][real], o[k][real])


def test_tokenizer_without_bos_starts_at_the_first_prompt_token():
  tok = NoBosTokenizer()
  packed = sft.pack_sft_examples([SFTExample("ab", "c")], tok, seq_len=8, shuffle_seed=None)
  a = packed.arrays
  assert a["decoder_input_tokens"][0, :3].tolist() == [97, 98, 99]
  assert a["decoder_target_tokens"][0, :3].tolist() == [98, 99, tok.eos_id]
  assert a["decoder_loss_weights"][0, :3].tolist() == [0.0, 1.0, 1.0]


def test_overlong_examples_are_dropped_and_counted_or_refused():
  fits = SFTExample("abc", "de")  # bos a b c d e eos: 7 tokens, 6 positions
  too_long = SFTExample("abcd", "de")
  packed = sft.pack_sft_examples([fits, too_long, fits], TOK, seq_len=6, shuffle_seed=None)
  assert packed.dropped == [1] and packed.num_examples == 2
  with pytest.raises(ValueError, match="1 of 3 SFT examples need more than seq_len=6"):
    sft.pack_sft_examples([fits, too_long, fits], TOK, seq_len=6, overlong="error")


def test_unpacked_rows_and_shuffling():
  unpacked = sft.pack_sft_examples(EXAMPLES, TOK, seq_len=96, pack=False, shuffle_seed=None)
  assert unpacked.num_rows == len(EXAMPLES)
  assert (unpacked.arrays["decoder_segment_ids"].max(axis=1) == 1).all()
  a = sft.pack_sft_examples(EXAMPLES, TOK, seq_len=96, pack=False, shuffle_seed=1)
  b = sft.pack_sft_examples(EXAMPLES, TOK, seq_len=96, pack=False, shuffle_seed=2)
  assert a.example_order != b.example_order
  assert sorted(a.example_order) == list(range(len(EXAMPLES)))
  row_of_0 = a.segments()[0][0]
  np.testing.assert_array_equal(a.arrays["decoder_target_tokens"][row_of_0],
                                unpacked.arrays["decoder_target_tokens"][0])


def test_completion_ids_from_the_sampler_are_used_verbatim():
  ex = SFTExample("p", "ignored text", completion_ids=(7, 8, TOK.eos_id))
  a = sft.pack_sft_examples([ex], TOK, seq_len=8, shuffle_seed=None).arrays
  assert a["decoder_target_tokens"][0, :4].tolist() == [ord("p"), 7, 8, TOK.eos_id]


# --- the iterator -------------------------------------------------------------------------


def _rows(n, seq_len=4):
  return {"decoder_target_tokens": np.arange(n * seq_len, dtype=np.int32).reshape(n, seq_len),
          "decoder_loss_weights": np.ones((n, seq_len), np.float32)}


def test_iterator_resumes_at_the_same_batch_after_save_and_restore():
  rows = _rows(10)
  it = SFTIterator(rows, global_batch_size=4, seed=5)
  for _ in range(7):
    next(it)
  saved = json.loads(json.dumps(it.state()))
  expected = [next(it) for _ in range(3)]
  resumed = SFTIterator(rows, global_batch_size=4, seed=5)
  resumed.restore(saved)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_each_epoch_is_a_seeded_permutation_and_nothing_is_dropped():
  it = SFTIterator(_rows(12), global_batch_size=4, seed=0)
  epoch0 = np.concatenate([it.row_indices(s) for s in range(3)])
  epoch1 = np.concatenate([it.row_indices(s) for s in range(3, 6)])
  assert sorted(epoch0.tolist()) == list(range(12)) == sorted(epoch1.tolist())
  assert epoch0.tolist() != epoch1.tolist()
  other_seed = SFTIterator(_rows(12), global_batch_size=4, seed=1)
  assert np.concatenate([other_seed.row_indices(s) for s in range(3)]).tolist() != epoch0.tolist()
  # 10 rows, batches of 4: batches straddle epochs, every row once per epoch.
  straddle = SFTIterator(_rows(10), global_batch_size=4, seed=0)
  stream = np.concatenate([straddle.row_indices(s) for s in range(5)])
  assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:].tolist())


def test_process_slices_make_up_the_global_batch():
  rows = _rows(16)
  full = SFTIterator(rows, global_batch_size=8, seed=3).global_batch(2)
  parts = [SFTIterator(rows, global_batch_size=8, seed=3, process_index=i,
                       process_count=4).local_batch(2) for i in range(4)]
  for k in full:
    assert all(p[k].shape[0] == 2 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
  with pytest.raises(ValueError, match="divisible by process_count"):
    SFTIterator(rows, global_batch_size=6, process_count=4)


def test_restore_refuses_a_state_from_other_data():
  state = SFTIterator(_rows(10), global_batch_size=4).state()
  changed = _rows(10)
  changed["decoder_loss_weights"][3, 1] = 0.0
  with pytest.raises(ValueError, match="fingerprint"):
    SFTIterator(changed, global_batch_size=4).restore(state)
  with pytest.raises(ValueError, match="global_batch_size"):
    SFTIterator(_rows(10), global_batch_size=2).restore(state)


# --- seqio --------------------------------------------------------------------------------


def test_seqio_task_yields_the_same_problems():
  task = get_task("arithmetic", num_train=12, num_test=4)  # re-registers the seqio task
  seqio_task = seqio.get_mixture_or_task("arithmetic")
  ds = seqio_task.get_dataset(sequence_length={"inputs": 256, "targets": 64}, split=TEST,
                              shuffle=False)
  rows = list(ds.as_numpy_iterator())
  problems = task.problems(TEST)
  assert [r["id"].decode() for r in rows] == [p.id for p in problems]
  for r, p in zip(rows, problems):
    assert r["inputs_pretokenized"].decode() == p.prompt
    assert json.loads(r["reference"]) == p.reference
    assert r["inputs"].tolist() == sft.encode_prompt(TOK, p.prompt)
    assert r["targets"].tolist() == sft.encode_completion(TOK, p.solution)
  for name in ("gsm8k", "math500", "humaneval"):
    assert set(seqio.get_mixture_or_task(name).splits) == {TRAIN, TEST}


def test_seqio_feature_converter_route_equals_pack_sft_examples(tmp_path):
  kept = tmp_path / "kept.jsonl"
  kept.write_text("".join(
      json.dumps({"prompt_id": f"p{i}", "prompt": f"Question: {i} + 1?\nAnswer:",
                  "completion": f" {i} + 1 = {i + 1}\n#### {i + 1}", "reward": 1.0,
                  "sample_idx": 0}) + "\n" for i in range(9)))
  seqio_tasks.register_sft_task("test_kept_iter1", kept, TOK)
  lengths = {"inputs": 40, "targets": 24}
  ds = seqio.get_dataset("test_kept_iter1", task_feature_lengths=lengths,
                         feature_converter=sft_seqio.CompletionFeatureConverter(pad_id=TOK.pad_id),
                         dataset_split=TRAIN, shuffle=False)
  via_seqio = list(ds.as_numpy_iterator())
  direct = sft.pack_sft_examples(sft_examples_from_kept(read_kept(kept)), TOK, seq_len=64,
                                 shuffle_seed=None).arrays
  assert len(via_seqio) == direct["decoder_target_tokens"].shape[0]
  for k in sft.FEATURES:
    np.testing.assert_array_equal(np.stack([r[k] for r in via_seqio]), direct[k])


def test_byte_vocabulary_adapter_round_trips():
  vocab = as_seqio_vocabulary(TOK)
  ids = vocab.encode("héllo\x00")
  assert vocab.decode(ids) == "héllo\x00"
  assert vocab.encode_tf(tf.constant("héllo")).numpy().tolist() == TOK.encode("héllo")
  assert vocab.decode_tf(tf.constant(ids + [TOK.eos_id, 104])).numpy().decode() == "héllo\x00"
  assert (vocab.eos_id, vocab.pad_id, vocab.vocab_size) == (258, 256, 384)


@pytest.mark.parametrize("seq_len,pack", [(32, True), (64, True), (48, False)])
def test_numpy_packer_equals_seqio(seq_len, pack):
  """The TensorFlow-free packer gives exactly seqio's rows (used where TF is absent)."""
  rng = np.random.default_rng(seq_len)
  examples = [SFTExample(prompt="p" * int(rng.integers(1, 12)),
                         completion="c" * int(rng.integers(0, 20)),
                         weight=float(rng.integers(1, 3)))
              for _ in range(150)]
  a = sft.pack_sft_examples(examples, TOK, seq_len, pack=pack, backend="seqio")
  b = sft.pack_sft_examples(examples, TOK, seq_len, pack=pack, backend="numpy")
  assert a.num_rows == b.num_rows and a.example_order == b.example_order
  for k in sft.FEATURES:
    np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
  with pytest.raises(ValueError, match="backend"):
    sft.pack_sft_examples(examples, TOK, seq_len, backend="torch")
