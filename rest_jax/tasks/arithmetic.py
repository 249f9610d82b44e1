"""Procedural integer arithmetic word problems: the embedded default's task.

  Tom has 23 apples. He buys 15 more, then gives away 7. How many apples does he have now?

  solution:  23 + 15 = 38
             38 - 7 = 31
             #### 31

Short texts a byte-level tiny model learns on CPU in minutes, exact integer answers that
the math verifier checks fast, and human-style solutions in GSM8K's ``#### N`` style so the
SFT baseline applies too. Knobs: `digits` (1-4, the size of the numbers), `steps` (number
of operations), `ops` ("+", "-", "*"; "*" multiplies by a one-digit factor).

Generation is a seeded stream of candidates; candidate k has the id
``arith-d{digits}s{steps}-{k:06d}``. Its split is decided by a hash of its arithmetic
(numbers and operations, not names): one in five goes to ``test``. Train and test can
therefore never share the same computation, and both are prefix-stable: asking for more
problems appends, it never changes the first ones. Candidates repeating the arithmetic of
an earlier one are skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

import gin

from rest_jax.tasks import base
from rest_jax.tasks.prompts import Exemplar, PromptFormat, TaskPromptDefaults

OPS = "+-*"
TEST_BUCKETS = 5  # one candidate in TEST_BUCKETS goes to the test split
NUM_EXEMPLARS = 8

INSTRUCTION = ("Solve the problem step by step. Write the final answer on the last line as "
               "'#### <number>'.")

_PEOPLE = (("Tom", "He"), ("Ann", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"),
           ("Eva", "She"), ("Max", "He"), ("Zoe", "She"), ("Leo", "He"), ("Ivy", "She"))
_ITEMS = ("apples", "pens", "coins", "books", "cards", "eggs", "stamps", "shells")
_CLAUSES = {
    "+": ("buys {n} more", "finds {n} more", "gets {n} more"),
    "-": ("gives away {n}", "loses {n}", "sells {n}"),
    "*": ("ends up with {n} times as many",),
}


def _check_knobs(digits: int, steps: int, ops: str):
  if digits not in (1, 2, 3, 4):
    raise base.TaskDataError(f"arithmetic: digits must be 1, 2, 3 or 4, got {digits!r}")
  if not isinstance(steps, int) or not 1 <= steps <= 8:
    raise base.TaskDataError(f"arithmetic: steps must be an int in [1, 8], got {steps!r}")
  if not ops or set(ops) - set(OPS) or "+" not in ops:
    # "+" keeps a subtraction from 0 possible to avoid (see _draw).
    raise base.TaskDataError(f"arithmetic: ops must be a string of {OPS!r} containing '+', got {ops!r}")


def _draw(rng: random.Random, digits: int, steps: int, ops: str):
  """One candidate: (start, [(op, n), ...], person, item, clause choices)."""
  lo, hi = (1 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
  start = rng.randint(lo, hi)
  value, terms = start, []
  for _ in range(steps):
    op = ops[rng.randrange(len(ops))]
    if op == "-" and value == 0:
      op = "+"  # nothing left to take away
    if op == "+":
      n = rng.randint(lo, hi)
    elif op == "-":
      n = rng.randint(min(lo, value), min(hi, value))  # the count never goes negative
    else:
      n = rng.randint(2, 9)
    value = value + n if op == "+" else value - n if op == "-" else value * n
    terms.append((op, n))
  person = _PEOPLE[rng.randrange(len(_PEOPLE))]
  item = _ITEMS[rng.randrange(len(_ITEMS))]
  clauses = [rng.randrange(len(_CLAUSES[op])) for op, _ in terms]
  return start, terms, person, item, clauses


WORDINGS = ("story", "expression")


def _render(start, terms, person, item, clauses, wording: str = "story"
            ) -> tuple[str, str, str]:
  """(question, solution, answer) of a drawn candidate."""
  name, pronoun = person
  parts = [_CLAUSES[op][c].format(n=n) for (op, n), c in zip(terms, clauses)]
  if wording == "expression":
    # Operations apply left to right, as in the story.
    question = f"{start}" + "".join(f" {op} {n}" for op, n in terms)
  else:
    question = (f"{name} has {start} {item}. {pronoun} {', then '.join(parts)}. "
                f"How many {item} does {pronoun.lower()} have now?")
  lines, value = [], start
  for op, n in terms:
    new = value + n if op == "+" else value - n if op == "-" else value * n
    lines.append(f"{value} {op} {n} = {new}")
    value = new
  lines.append(f"#### {value}")
  return question, "\n".join(lines), str(value)


def _arith_key(start, terms) -> str:
  return f"{start}" + "".join(f"{op}{n}" for op, n in terms)


def _bucket(key: str) -> str:
  h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
  return base.TEST if h % TEST_BUCKETS == 0 else base.TRAIN


def generate(*, digits: int, steps: int, ops: str, seed: int, num_train: int,
             num_test: int, wording: str = "story") -> dict[str, list[base.RawProblem]]:
  """The first `num_train` train and `num_test` test problems of the seeded stream."""
  _check_knobs(digits, steps, ops)
  rng = random.Random(f"rest_jax.arithmetic:{seed}:{digits}:{steps}:{ops}")
  want = {base.TRAIN: num_train, base.TEST: num_test}
  out = {base.TRAIN: [], base.TEST: []}
  seen = set()
  max_candidates = 50 * (num_train + num_test) + 1000
  k = 0
  while any(len(out[s]) < want[s] for s in out):
    if k >= max_candidates:
      raise base.TaskDataError(
          f"arithmetic: only {len(out[base.TRAIN])} train / {len(out[base.TEST])} test distinct "
          f"problems found in {k} candidates for digits={digits}, steps={steps}, ops={ops!r}; "
          "ask for fewer problems (arithmetic_task.num_train, num_test) or a harder setting")
    drawn = _draw(rng, digits, steps, ops)
    key = _arith_key(drawn[0], drawn[1])
    split = _bucket(key)
    if key not in seen and len(out[split]) < want[split]:
      seen.add(key)
      question, solution, answer = _render(*drawn, wording=wording)
      out[split].append(base.RawProblem(
          id=f"arith-d{digits}s{steps}-{k:06d}", question=question, reference=answer,
          solution=solution,
          meta={"digits": digits, "steps": steps, "ops": ops, "seed": seed, "index": k}))
    k += 1
  return out


def exemplars(*, digits: int, steps: int, ops: str, seed: int, wording: str = "story"
              ) -> tuple[Exemplar, ...]:
  """Few-shot exemplars from a separate stream, all in the train bucket (never test)."""
  rng = random.Random(f"rest_jax.arithmetic.fewshot:{seed}:{digits}:{steps}:{ops}")
  out = []
  while len(out) < NUM_EXEMPLARS:
    drawn = _draw(rng, digits, steps, ops)
    if _bucket(_arith_key(drawn[0], drawn[1])) == base.TRAIN:
      question, solution, _ = _render(*drawn, wording=wording)
      out.append(Exemplar(question, solution))
  return tuple(out)


@gin.configurable(module="rest_jax.tasks")
def arithmetic_task(*,
                    digits: int = 2,
                    steps: int = 2,
                    ops: str = "+-",
                    num_train: int = 2000,
                    num_test: int = 200,
                    seed: int = 0,
                    wording: str = "story",
                    check_work: bool = False,
                    prompt_format: PromptFormat | None = None,
                    tokenizer=None) -> base.RestTask:
  """Seeded multi-step integer word problems; see the module doc for the knobs.

  wording: "story" (a word problem) or "expression" (just "3 + 4 - 2": short prompts for
    byte-level models).
  check_work: a completion passes only if its shown equations are all true as well as its
    final answer (math verifier's `check_work`): a right answer from wrong steps fails.
  """
  _check_knobs(digits, steps, ops)
  if wording not in WORDINGS:
    raise base.TaskDataError(f"arithmetic: wording must be one of {WORDINGS}, got {wording!r}")
  if num_train < 0 or num_test < 0:
    raise base.TaskDataError(f"arithmetic: num_train and num_test must be >= 0, got {num_train}, "
                     f"{num_test}")
  cache = {}

  def load_split(split):
    if "all" not in cache:
      drawn = generate(digits=digits, steps=steps, ops=ops, seed=seed,
                       num_train=num_train, num_test=num_test, wording=wording)
      if check_work:  # marked once: the verifier item carries it (loop/generate.py)
        drawn = {s: [dataclasses.replace(p, meta={**p.meta, "check_work": True}) for p in ps]
                 for s, ps in drawn.items()}
      cache["all"] = drawn
    return cache["all"][split]

  return base.RestTask(
      "arithmetic", verifier=base.MATH_VERIFIER, load_split=load_split,
      prompt_defaults=TaskPromptDefaults(style="plain", num_shots=0, instruction=INSTRUCTION),
      prompt_format=prompt_format,
      exemplars=exemplars(digits=digits, steps=steps, ops=ops, seed=seed, wording=wording),
      tokenizer=tokenizer,
      description=f"integer word problems: {digits}-digit numbers, {steps} steps, ops {ops!r}",
      source=f"generated (seed {seed})")


base.register_task("arithmetic", arithmetic_task, "procedural integer arithmetic word problems")
