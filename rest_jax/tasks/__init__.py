"""Tasks: prompts with ids and references, a verifier name, splits; and the SFT data path.

Light to import (no TensorFlow, seqio or jax): verifier workers and the CLI read tasks
through it. The heavy parts are separate modules:

* `rest_jax.tasks.seqio_tasks`: registers every task with `seqio.TaskRegistry`
  (import it, t5x style, before `seqio.get_mixture_or_task("gsm8k")`). seqio itself
  imports TensorFlow and jax.
* `rest_jax.tasks.sft`: tokenises and packs kept samples with a seqio feature converter.
* `rest_jax.tasks.sft_iterator`: the checkpointable iterator over packed global batches.

Built-in tasks: gsm8k, math500, humaneval, arithmetic, programs, jsonl (see their modules).
"""

from rest_jax.tasks.base import (CODE_VERIFIER, MATH_VERIFIER, SPLITS, TEST, TRAIN, Problem,
                                 RawProblem, RestTask, TaskDataError, get_task, hash_split,
                                 register_task, task_description, task_names)
from rest_jax.tasks.kept import (KeptDataError, KeptSample, SFTExample, parse_kept_lines,
                                 read_kept, sft_examples_from_kept)
from rest_jax.tasks.prompts import Exemplar, PromptFormat, TaskPromptDefaults

# Imported for their registrations.
from rest_jax.tasks import arithmetic  # pylint: disable=g-bad-import-order
from rest_jax.tasks import gsm8k
from rest_jax.tasks import humaneval
from rest_jax.tasks import jsonl
from rest_jax.tasks import math500
from rest_jax.tasks import programs
from rest_jax.tasks.arithmetic import arithmetic_task
from rest_jax.tasks.gsm8k import gsm8k_task
from rest_jax.tasks.humaneval import humaneval_task
from rest_jax.tasks.jsonl import jsonl_task, register_jsonl_task
from rest_jax.tasks.math500 import math500_task
from rest_jax.tasks.programs import programs_task

__all__ = [
    "CODE_VERIFIER", "MATH_VERIFIER", "SPLITS", "TEST", "TRAIN", "Exemplar", "KeptDataError",
    "KeptSample", "Problem", "PromptFormat", "RawProblem", "RestTask", "SFTExample",
    "TaskDataError", "TaskPromptDefaults", "arithmetic_task", "get_task", "gsm8k_task",
    "hash_split", "humaneval_task", "jsonl_task", "math500_task", "parse_kept_lines",
    "programs_task", "read_kept", "register_jsonl_task", "register_task", "sft_examples_from_kept",
    "task_description", "task_names",
]
