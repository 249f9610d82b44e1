"""The tasks as seqio Tasks, for t5x habits: ``import rest_jax.tasks.seqio_tasks`` then
``seqio.get_mixture_or_task("gsm8k")``.

Importing this module registers every built-in task (with its default or gin-bound
settings and the byte vocabulary), and from then on every `get_task(...)` re-registers
its task under its name, with that task's prompt format and tokenizer, so that the seqio
Task always yields the same prompts as `RestTask.problems`.

Features of each example:

* ``id``, ``verifier``: strings; ``reference``: the reference as JSON text.
* ``inputs_pretokenized``: the rendered prompt; ``inputs``: its ids (BOS included, see
  `sft.encode_prompt`).
* ``targets_pretokenized``: the human solution as a completion ("" if none);
  ``targets``: its ids ending with EOS. So `seqio.get_dataset(name, ...,
  feature_converter=sft_seqio.CompletionFeatureConverter(...))` gives the "SFT on human data"
  baseline's batches.

`register_sft_task` registers a kept-samples file the same way.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

import seqio
import tensorflow as tf

from rest_jax import tokenizers
from rest_jax.tasks import base
from rest_jax.tasks import kept as kept_lib
from rest_jax.tasks import sft
from rest_jax.tasks import sft_seqio

# One shared default: the vocabulary adapter compares tokenizers by identity, and seqio
# mixtures need their tasks' vocabularies equal.
DEFAULT_TOKENIZER = tokenizers.ByteTokenizer()


def output_features(tokenizer) -> dict[str, seqio.Feature]:
  vocab = tokenizers.as_seqio_vocabulary(tokenizer)
  # EOS is part of "targets" already (sft.encode_completion): seqio must not add another.
  return {"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
          "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)}


def _dataset(rows: dict, shuffle_files: bool, seed: int | None) -> tf.data.Dataset:
  """A tf.data.Dataset of `rows` (feature -> list); token lists become 1-D int32 tensors."""
  tensors = {}
  for k, v in rows.items():
    if k in ("inputs", "targets"):
      tensors[k] = tf.RaggedTensor.from_row_lengths(
          tf.constant([t for s in v for t in s], tf.int32), [len(s) for s in v])
    else:
      tensors[k] = tf.constant(v, tf.string)
  ds = tf.data.Dataset.from_tensor_slices(tensors).map(
      lambda ex: {k: tf.ensure_shape(t, [None]) if k in ("inputs", "targets") else t
                  for k, t in ex.items()})
  if shuffle_files:  # one "file": shuffle the examples instead
    ds = ds.shuffle(max(1, len(rows["inputs"])), seed=seed)
  return ds


def _empty_rows():
  return {"id": [], "verifier": [], "reference": [], "inputs_pretokenized": [],
          "targets_pretokenized": [], "inputs": [], "targets": []}


def _add_to_registry(name: str, dataset_fn, splits: Sequence[str], tokenizer) -> seqio.Task:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  source = seqio.FunctionDataSource(dataset_fn, splits=list(splits))
  return seqio.TaskRegistry.add(name, source=source, output_features=output_features(tokenizer),
                                preprocessors=[], metric_fns=[])


def register_seqio_task(task: base.RestTask, tokenizer=None, name: str | None = None
                        ) -> seqio.Task:
  """Registers (or replaces) the seqio Task for `task`; returns it.

  Args:
    task: the task.
    tokenizer: the vocabulary of "inputs"/"targets" (default: the task's, else bytes).
    name: the registry name (default: the task's name).
  """
  tokenizer = tokenizer or task.tokenizer or DEFAULT_TOKENIZER

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    rows = _empty_rows()
    for p in task.problems(split):
      completion = p.solution if p.solution is not None else ""
      rows["id"].append(p.id)
      rows["verifier"].append(p.verifier)
      rows["reference"].append(json.dumps(p.reference))
      rows["inputs_pretokenized"].append(p.prompt)
      rows["targets_pretokenized"].append(completion)
      rows["inputs"].append(sft.encode_prompt(tokenizer, p.prompt))
      rows["targets"].append(sft.encode_completion(tokenizer, completion))
    return _dataset(rows, shuffle_files, seed)

  return _add_to_registry(name or task.name, dataset_fn, task.splits, tokenizer)


def register_sft_task(name: str, kept_path, tokenizer, *, split: str = base.TRAIN
                      ) -> seqio.Task:
  """Registers an iteration's kept samples as a seqio Task (one split, `split`).

  Its "inputs"/"targets" are the prompt and completion ids; pair it with
  `sft_seqio.CompletionFeatureConverter` for packed, completion-masked batches. Loss weights on
  this path are 0/1 (seqio's packer keeps integers); reward weights need
  `sft.pack_sft_examples`.
  """
  samples = kept_lib.read_kept(kept_path)  # read now: a malformed file fails at registration

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del split
    rows = _empty_rows()
    for s in samples:
      rows["id"].append(f"{s.prompt_id}#{s.sample_idx}")
      rows["verifier"].append("")
      rows["reference"].append("null")
      rows["inputs_pretokenized"].append(s.prompt)
      rows["targets_pretokenized"].append(s.completion)
      rows["inputs"].append(sft.encode_prompt(tokenizer, s.prompt))
      rows["targets"].append(sft.encode_completion(tokenizer, s.completion))
    return _dataset(rows, shuffle_files, seed)

  return _add_to_registry(name, dataset_fn, [split], tokenizer)


def _on_task_built(task: base.RestTask) -> None:
  register_seqio_task(task)


def _register_builtins() -> None:
  for name in base.task_names():
    if name == "jsonl":
      continue  # needs a file; registered when get_task builds it
    try:
      base.get_task(name)  # the hook registers it
    except (ValueError, base.TaskDataError) as e:
      # E.g. gin selects chat prompts, which need the model's tokenizer: the task is
      # registered when the loop builds it with get_task(..., tokenizer=...).
      logging.warning("seqio: task %r not registered at import: %s", name, e)


if _on_task_built not in base.TASK_BUILT_HOOKS:
  base.TASK_BUILT_HOOKS.append(_on_task_built)
_register_builtins()
