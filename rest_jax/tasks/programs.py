"""Procedural Python programming problems, checked by hidden tests in the sandbox.

Each problem is a short pipeline of transformations of a list of ints, a string or an int
(add 3 to each, keep those > 4, reverse, count vowels, digit sum, sum, max, ...), posed in
one of two formats:

  function: the prompt is a header and docstring, the completion the body (the program
            is prompt + completion); hidden tests are asserts calling ``f``.

              def f(xs):
                  \"\"\"Add 3 to each, then sum.\"\"\"
            solution:
                  xs = [x + 3 for x in xs]
                  return sum(xs)

  stdio:    the prompt is a comment, the completion the whole program; hidden tests feed
            stdin and compare stdout token by token.

              # Read ints. Keep the even ones. Print them.
            solution:
              xs = list(map(int, input().split()))
              print(*[x for x in xs if x % 2 == 0])

The reference is in the code verifier's formats (`verifiers/code_harness.py`):
``{"test": <asserts>, "entry_point": "f"}`` or ``{"inputs": [...], "outputs": [...]}``.
Hidden-test inputs are picked from a pool of random ones to tell the pipeline apart from its
near misses (another constant, another operation, a step left out) and from constant
programs, so a verified sample is rarely right by luck. Solutions are human-style, one line
per step, for the SFT baseline. Prompts and programs are short so that the byte-level
`tiny` model learns them on CPU.

Knobs: `steps` (operations per problem: an int in [1, 4], or a (min, max) pair: the
difficulty), `kinds` (input types: "list", "str", "int"), `formats` ("function", "stdio"),
`num_tests` (hidden tests per problem).

Generation is a seeded stream of candidates; candidate k has the id
``prog-s{steps}-{k:06d}``. Its split is decided by a hash of its pipeline (input type,
operations and constants; not the format or the test inputs): one in five goes to ``test``,
so train and test never share a transformation, in either format. Candidates repeating the
pipeline of an earlier one are skipped, as are the few that no hidden tests tell from a
constant program; both splits are prefix-stable (asking for more problems appends).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any, Callable

import gin

from rest_jax.tasks import base
from rest_jax.tasks.prompts import PromptFormat, TaskPromptDefaults

KINDS = ("list", "str", "int")
FORMATS = ("function", "stdio")
MAX_STEPS = 4
TEST_BUCKETS = 5  # one pipeline in TEST_BUCKETS goes to the test split
_POOL = 24  # random inputs per problem that its hidden tests are picked from

INSTRUCTION = ("Write the Python code that the comment or docstring describes. Reply with the "
               "complete code in a ```python code block.")

_VAR = {"list": "xs", "str": "s", "int": "n"}
_READ = {"list": "xs = list(map(int, input().split()))", "str": "s = input()",
         "int": "n = int(input())"}
_NOUN = {"list": "ints", "str": "a string", "int": "an int"}
_LETTERS = "aeioubcdklmnrst"  # vowels are common, so vowel operations have work to do
_VOWELS = "aeiou"


@dataclasses.dataclass(frozen=True)
class _Op:
  """One step: `text` describes it, `expr` computes it in Python, `fn` for the tests."""

  name: str
  src: str
  dst: str
  text: str  # "{k}" stands for the constant's repr
  expr: str
  fn: Callable[[Any, Any], Any]
  consts: tuple = (None,)


_OPS = (
    # list -> list
    _Op("add", "list", "list", "add {k} to each", "[x + {k} for x in xs]",
        lambda v, k: [x + k for x in v], tuple(range(1, 10))),
    _Op("mul", "list", "list", "multiply each by {k}", "[x * {k} for x in xs]",
        lambda v, k: [x * k for x in v], (2, 3, 4, 5)),
    _Op("gt", "list", "list", "keep those > {k}", "[x for x in xs if x > {k}]",
        lambda v, k: [x for x in v if x > k], tuple(range(0, 9))),
    _Op("even", "list", "list", "keep the even ones", "[x for x in xs if x % 2 == 0]",
        lambda v, k: [x for x in v if x % 2 == 0]),
    _Op("odd", "list", "list", "keep the odd ones", "[x for x in xs if x % 2 == 1]",
        lambda v, k: [x for x in v if x % 2 == 1]),
    _Op("rev", "list", "list", "reverse", "xs[::-1]", lambda v, k: v[::-1]),
    _Op("sort", "list", "list", "sort", "sorted(xs)", lambda v, k: sorted(v)),
    # list -> int
    _Op("sum", "list", "int", "sum", "sum(xs)", lambda v, k: sum(v)),
    _Op("max", "list", "int", "max", "max(xs)", lambda v, k: max(v)),
    _Op("min", "list", "int", "min", "min(xs)", lambda v, k: min(v)),
    _Op("len", "list", "int", "count them", "len(xs)", lambda v, k: len(v)),
    # str -> str
    _Op("rev", "str", "str", "reverse", "s[::-1]", lambda v, k: v[::-1]),
    _Op("upper", "str", "str", "uppercase", "s.upper()", lambda v, k: v.upper()),
    _Op("rep", "str", "str", "repeat {k} times", "s * {k}", lambda v, k: v * k, (2, 3)),
    _Op("drop", "str", "str", "remove {k}", "s.replace({k}, '')",
        lambda v, k: v.replace(k, ""), tuple(_VOWELS)),
    _Op("head", "str", "str", "first {k} chars", "s[:{k}]", lambda v, k: v[:k], (1, 2, 3, 4)),
    # str -> int
    _Op("len", "str", "int", "length", "len(s)", lambda v, k: len(v)),
    _Op("vowels", "str", "int", "count vowels", "sum(c in 'aeiou' for c in s)",
        lambda v, k: sum(c in _VOWELS for c in v)),
    _Op("count", "str", "int", "count {k}", "s.count({k})", lambda v, k: v.count(k),
        tuple(_VOWELS)),
    # int -> int
    _Op("add", "int", "int", "add {k}", "n + {k}", lambda v, k: v + k, tuple(range(1, 10))),
    _Op("mul", "int", "int", "multiply by {k}", "n * {k}", lambda v, k: v * k, (2, 3, 4, 5)),
    _Op("sq", "int", "int", "square", "n * n", lambda v, k: v * v),
    _Op("mod", "int", "int", "mod {k}", "n % {k}", lambda v, k: v % k, tuple(range(2, 10))),
    _Op("dsum", "int", "int", "digit sum", "sum(int(d) for d in str(n))",
        lambda v, k: sum(int(d) for d in str(v))),
    # int -> list
    _Op("digits", "int", "list", "take its digits", "[int(d) for d in str(n)]",
        lambda v, k: [int(d) for d in str(v)]),
)
_OPS_FROM = {kind: [op for op in _OPS if op.src == kind] for kind in KINDS}

Step = tuple[_Op, Any]  # an operation and its constant (None if it takes none)


def _steps_range(steps) -> tuple[int, int]:
  """(min, max) steps from the knob, or a ValueError naming it."""
  ok_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_STEPS
  if ok_int(steps):
    return steps, steps
  if (isinstance(steps, (tuple, list)) and len(steps) == 2 and all(map(ok_int, steps))
      and steps[0] <= steps[1]):
    return steps[0], steps[1]
  raise base.TaskDataError(f"programs: steps must be an int in [1, {MAX_STEPS}] or a (min, max) pair "
                   f"of them with min <= max, got {steps!r}")


def _choices(knob: str, value, allowed: tuple[str, ...]) -> tuple[str, ...]:
  """A non-empty tuple of distinct names from `allowed` (a lone name is one choice)."""
  if isinstance(value, str):
    value = (value,)
  if (not isinstance(value, (tuple, list)) or not value or len(set(value)) != len(value)
      or not all(isinstance(v, str) and v in allowed for v in value)):
    raise base.TaskDataError(f"programs: {knob} must be a non-empty tuple of distinct names from "
                     f"{allowed}, got {value!r}")
  return tuple(value)


def _check_knobs(steps, kinds, formats, num_tests):
  lo_hi = _steps_range(steps)
  kinds = _choices("kinds", kinds, KINDS)
  formats = _choices("formats", formats, FORMATS)
  if isinstance(num_tests, bool) or not isinstance(num_tests, int) or not 2 <= num_tests <= 20:
    # Two at least: the tests must tell a constant program from a right one.
    raise base.TaskDataError(f"programs: num_tests must be an int in [2, 20], got {num_tests!r}")
  return lo_hi, kinds, formats


def _draw_input(rng: random.Random, kind: str):
  if kind == "list":
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
  if kind == "str":
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 7)))
  return rng.randint(0, 999)


def _apply(pipeline: list[Step], value):
  for op, k in pipeline:
    value = op.fn(value, k)
  return value


def _draw(rng: random.Random, lo: int, hi: int, kinds, formats):
  """One candidate: (kind, pipeline, format)."""
  kind = kinds[rng.randrange(len(kinds))]
  pipeline, cur = [], kind
  for _ in range(rng.randint(lo, hi)):
    ops = _OPS_FROM[cur]
    op = ops[rng.randrange(len(ops))]
    pipeline.append((op, op.consts[rng.randrange(len(op.consts))]))
    cur = op.dst
  return kind, pipeline, formats[rng.randrange(len(formats))]


def _near_misses(pipeline: list[Step]) -> list[list[Step]]:
  """Pipelines one slip away: a step with another constant, another operation of the same
  types, or left out. Good hidden tests tell the pipeline from each of them."""
  out = []
  for i, (op, k) in enumerate(pipeline):
    for other in _OPS:
      if (other.src, other.dst) == (op.src, op.dst):
        out += [pipeline[:i] + [(other, c)] + pipeline[i + 1:] for c in other.consts
                if (other, c) != (op, k)]
    if op.src == op.dst:
      out.append(pipeline[:i] + pipeline[i + 1:])
  return out


def _outputs(pipeline: list[Step], inputs: list):
  outs = []
  for x in inputs:
    try:
      outs.append(repr(_apply(pipeline, x)))
    except ValueError:
      outs.append(None)  # max() of an emptied list: an error where the reference returns
  return outs


def _hidden_tests(rng: random.Random, kind: str, pipeline: list[Step], num_tests: int):
  """[(input, output), ...] that tell the pipeline from near misses, or None.

  From a pool of random inputs (those the pipeline is defined on), picks greedily the input
  that tells the most remaining near misses and constant programs apart. Near misses that
  no input of the pool tells apart are taken as equivalent (add 3, then count them). None
  when a constant program would pass.
  """
  pool = [_draw_input(rng, kind) for _ in range(_POOL)]
  want = _outputs(pipeline, pool)
  pool = [x for x, y in zip(pool, want) if y is not None]
  want = [y for y in want if y is not None]
  if len(pool) < num_tests or len(set(want)) < 2:
    return None
  # Each rival is the set of pool positions where it differs from the pipeline.
  rivals = [{i for i, (a, b) in enumerate(zip(_outputs(m, pool), want)) if a != b}
            for m in _near_misses(pipeline)]
  rivals += [{i for i, b in enumerate(want) if b != y} for y in set(want)]  # constants
  rivals = [r for r in rivals if r]
  chosen = []
  while len(chosen) < num_tests:
    free = [i for i in range(len(pool)) if i not in chosen]
    best = max(free, key=lambda i: (sum(i in r for r in rivals), -i))
    chosen.append(best)
    rivals = [r for r in rivals if best not in r]
  if len({want[i] for i in chosen}) < 2:
    return None
  chosen.sort()
  return [(pool[i], _apply(pipeline, pool[i])) for i in chosen]


def _pipeline_key(kind: str, pipeline: list[Step]) -> str:
  return kind + "".join(f">{op.name}" + ("" if k is None else str(k)) for op, k in pipeline)


def _bucket(key: str) -> str:
  h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
  return base.TEST if h % TEST_BUCKETS == 0 else base.TRAIN


def _description(pipeline: list[Step]) -> str:
  text = ", then ".join(op.text.format(k=repr(k)) for op, k in pipeline)
  return text[0].upper() + text[1:]


def _lines(pipeline: list[Step]) -> tuple[list[str], str]:
  """Assignment lines of all steps but the last, and the last step's expression."""
  lines = [f"{_VAR[op.dst]} = {op.expr.format(k=repr(k))}" for op, k in pipeline[:-1]]
  last, k = pipeline[-1]
  return lines, last.expr.format(k=repr(k))


def _as_stdio(value) -> str:
  return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _render(kind: str, pipeline: list[Step], fmt: str, cases):
  """(question, solution, reference, extra meta) of a usable candidate."""
  lines, last = _lines(pipeline)
  out_kind = pipeline[-1][0].dst
  if fmt == "function":
    var = _VAR[kind]
    question = f'def f({var}):\n    """{_description(pipeline)}."""\n'
    solution = "".join(f"    {line}\n" for line in lines + [f"return {last}"])
    test = "".join(f"assert f({x!r}) == {y!r}\n" for x, y in cases)
    return question, solution, {"test": test, "entry_point": "f"}, {"code_prompt": question}
  shown = "them" if out_kind == "list" else "it"  # any whitespace between them passes
  question = f"# Read {_NOUN[kind]}. {_description(pipeline)}. Print {shown}.\n"
  final = f"print(*{last})" if out_kind == "list" else f"print({last})"
  solution = "".join(f"{line}\n" for line in [_READ[kind]] + lines + [final])
  reference = {"inputs": [_as_stdio(x) for x, _ in cases],
               "outputs": [_as_stdio(y) for _, y in cases]}
  return question, solution, reference, {}


def _steps_tag(lo: int, hi: int) -> str:
  return str(lo) if lo == hi else f"{lo}to{hi}"


def generate(*, steps=2, kinds=KINDS, formats=FORMATS, num_tests: int = 4, seed: int = 0,
             num_train: int, num_test: int) -> dict[str, list[base.RawProblem]]:
  """The first `num_train` train and `num_test` test problems of the seeded stream."""
  (lo, hi), kinds, formats = _check_knobs(steps, kinds, formats, num_tests)
  stream = (f"rest_jax.programs:{seed}:{lo}:{hi}:{','.join(kinds)}:{','.join(formats)}:"
            f"{num_tests}")
  rng = random.Random(stream)
  want = {base.TRAIN: num_train, base.TEST: num_test}
  out = {base.TRAIN: [], base.TEST: []}
  seen = set()
  max_candidates = 50 * (num_train + num_test) + 1000
  k = 0
  while any(len(out[s]) < want[s] for s in out):
    if k >= max_candidates:
      raise base.TaskDataError(
          f"programs: only {len(out[base.TRAIN])} train / {len(out[base.TEST])} test distinct "
          f"problems found in {k} candidates for steps={steps!r}, kinds={kinds}, "
          f"formats={formats}; ask for fewer problems or more steps or kinds")
    kind, pipeline, fmt = _draw(rng, lo, hi, kinds, formats)
    key = _pipeline_key(kind, pipeline)
    split = _bucket(key)
    # Tests draw from their own stream: whether a candidate is kept changes nothing after it.
    cases = None
    if key not in seen and len(out[split]) < want[split]:
      cases = _hidden_tests(random.Random(f"{stream}:{k}"), kind, pipeline, num_tests)
    if cases is not None:
      seen.add(key)
      question, solution, reference, meta = _render(kind, pipeline, fmt, cases)
      out[split].append(base.RawProblem(
          id=f"prog-s{_steps_tag(lo, hi)}-{k:06d}", question=question, reference=reference,
          solution=solution,
          meta={"format": fmt, "kind": kind, "steps": len(pipeline), "pipeline": key,
                "seed": seed, "index": k, **meta}))
    k += 1
  return out


@gin.configurable(module="rest_jax.tasks")
def programs_task(*,
                  steps=2,
                  kinds=KINDS,
                  formats=FORMATS,
                  num_tests: int = 4,
                  num_train: int = 1000,
                  num_test: int = 200,
                  seed: int = 0,
                  prompt_format: PromptFormat | None = None,
                  tokenizer=None) -> base.RestTask:
  """Seeded Python programming problems with hidden tests; see the module doc for the knobs."""
  (lo, hi), kinds, formats = _check_knobs(steps, kinds, formats, num_tests)
  for name, value in (("num_train", num_train), ("num_test", num_test)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise base.TaskDataError(f"programs: {name} must be an int >= 0, got {value!r}")
  cache = {}

  def load_split(split):
    if "all" not in cache:
      cache["all"] = generate(steps=steps, kinds=kinds, formats=formats, num_tests=num_tests,
                              seed=seed, num_train=num_train, num_test=num_test)
    return cache["all"][split]

  return base.RestTask(
      "programs", verifier=base.CODE_VERIFIER, load_split=load_split,
      prompt_defaults=TaskPromptDefaults(
          style="raw", num_shots=0, instruction=INSTRUCTION,
          chat_question_template="```python\n{question}```",
          chat_solution_template="```python\n{question}{solution}```"),
      prompt_format=prompt_format, exemplars=(), tokenizer=tokenizer,
      description=(f"Python programs with hidden tests: {_steps_tag(lo, hi)} steps, kinds "
                   f"{kinds}, formats {formats}"),
      source=f"generated (seed {seed})")


base.register_task("programs", programs_task,
                   "procedural Python programming problems with hidden tests")
