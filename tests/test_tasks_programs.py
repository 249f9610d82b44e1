"""The procedural programs task: seeded, prefix-stable, disjoint, and right by the verifier."""

import dataclasses
import io
import random
import re

import gin
import pytest

from rest_jax.loop.generate import verifier_item
from rest_jax.tasks import CODE_VERIFIER, TEST, TRAIN, PromptFormat, get_task
from rest_jax.tasks import cli
from rest_jax.tasks import programs
from rest_jax.tokenizers import ByteTokenizer
from rest_jax.verifiers import VerifierPool


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


def _mixed(num_train=40, num_test=10, **knobs):
  """Problems of every steps level, kind and format."""
  out = []
  for steps in (1, 2, 3, 4):
    # One step has under a hundred distinct problems (about 67 train, 8 test).
    n_train, n_test = (num_train, num_test) if steps > 1 else (min(num_train, 60),
                                                               min(num_test, 4))
    task = get_task("programs", steps=steps, num_train=n_train, num_test=n_test, **knobs)
    out += task.problems(TRAIN) + task.problems(TEST)
  return out


def _run_in_process(p):
  """Runs a (trusted) reference solution here against its tests: fast, no sandbox."""
  if p.meta["format"] == "function":
    namespace = {}
    exec(p.prompt + p.solution, namespace)  # noqa: S102 - our own generated solutions
    exec(p.reference["test"], namespace)  # noqa: S102
    return
  for stdin, expected in zip(p.reference["inputs"], p.reference["outputs"]):
    printed = []
    lines = iter(stdin.split("\n"))
    exec(p.solution, {"input": lambda: next(lines),  # noqa: S102
                      "print": lambda *a: printed.append(" ".join(map(str, a)))})
    assert " ".join(printed).split() == expected.split(), (p.id, stdin)


def test_problems_have_the_documented_shape_and_short_texts():
  task = get_task("programs")
  assert task.verifier == CODE_VERIFIER
  assert (task.num_problems(TRAIN), task.num_problems(TEST)) == (1000, 200)
  problems = task.problems(TRAIN) + task.problems(TEST)
  assert {p.meta["format"] for p in problems} == {"function", "stdio"}
  assert {p.meta["kind"] for p in problems} == {"list", "str", "int"}
  for p in problems:
    assert re.fullmatch(r"prog-s2-\d{6}", p.id) and p.meta["steps"] == 2
    assert p.verifier == CODE_VERIFIER and p.prompt == p.meta["question"]
    assert len(p.prompt) <= 100 and len(p.solution) <= 110  # short: a byte-level model
    if p.meta["format"] == "function":
      assert re.fullmatch(r'def f\((xs|s|n)\):\n    """[A-Z].*\."""\n', p.prompt)
      assert set(p.reference) == {"test", "entry_point"} and p.reference["entry_point"] == "f"
      assert p.reference["test"].count("assert f(") == 4
      assert p.meta["code_prompt"] == p.prompt  # the program is prompt + completion
      assert p.solution.startswith("    ") and "\n    return " in "\n" + p.solution
    else:
      assert p.prompt.startswith("# Read ") and p.prompt.endswith(".\n")
      assert set(p.reference) == {"inputs", "outputs"} and len(p.reference["inputs"]) == 4
      assert all(isinstance(x, str) for x in p.reference["inputs"] + p.reference["outputs"])
      assert "code_prompt" not in p.meta and "print(" in p.solution.splitlines()[-1]
    # The tests tell a constant program from a right one.
    outs = p.reference["outputs"] if "outputs" in p.reference else re.findall(
        r"== (.*)\n", p.reference["test"])
    assert len(set(outs)) >= 2, p.id


def test_reference_solutions_compute_their_tests():
  problems = _mixed(num_train=150, num_test=30)
  assert {p.meta["steps"] for p in problems} == {1, 2, 3, 4}
  for p in problems:
    _run_in_process(p)
    assert len(p.solution.splitlines()) == p.meta["steps"] + (p.meta["format"] == "stdio")


def test_seeded_deterministic_and_prefix_stable():
  a = get_task("programs", num_train=40, num_test=10, seed=7)
  b = get_task("programs", num_train=80, num_test=20, seed=7)
  c = get_task("programs", num_train=40, num_test=10, seed=8)
  assert a.problems(TRAIN) == b.problems(TRAIN)[:40]
  assert a.problems(TEST) == b.problems(TEST)[:10]
  assert a.problems(TRAIN) == get_task("programs", num_train=40, num_test=10,
                                       seed=7).problems(TRAIN)
  assert [p.prompt for p in a.problems(TRAIN)] != [p.prompt for p in c.problems(TRAIN)]


def test_train_and_test_never_share_a_transformation():
  task = get_task("programs", steps=(1, 2), num_train=1000, num_test=250)
  train = [p.meta["pipeline"] for p in task.problems(TRAIN)]
  test = [p.meta["pipeline"] for p in task.problems(TEST)]
  # Distinct within each split, whatever the format, and never in both.
  assert len(set(train)) == len(train) and len(set(test)) == len(test)
  assert not set(train) & set(test)
  assert not {p.prompt for p in task.problems(TRAIN)} & {p.prompt for p in task.problems(TEST)}


def test_difficulty_kinds_and_formats_knobs():
  task = get_task("programs", steps=(1, 3), kinds=("str",), formats="stdio", num_train=60,
                  num_test=10)
  problems = task.problems(TRAIN)
  assert {p.meta["steps"] for p in problems} == {1, 2, 3}
  assert all(p.id.startswith("prog-s1to3-") for p in problems)
  assert {(p.meta["kind"], p.meta["format"]) for p in problems} == {("str", "stdio")}
  assert all(p.prompt.startswith("# Read a string.") for p in problems)
  funcs = get_task("programs", kinds=("int", "list"), formats=("function",), num_tests=6,
                   num_train=30, num_test=5).problems(TRAIN)
  assert {p.meta["kind"] for p in funcs} == {"int", "list"}
  assert all(p.reference["test"].count("assert") == 6 for p in funcs)


def test_hidden_tests_tell_near_misses_apart():
  # A near miss (another constant, another operation, a step left out) that some input tells
  # apart from the pipeline almost never passes the four hidden tests.
  rng = random.Random(0)
  weak = total = 0
  for i in range(150):
    kind, pipeline, _ = programs._draw(rng, 1, 2, programs.KINDS, ("function",))
    cases = programs._hidden_tests(random.Random(i), kind, pipeline, 4)
    if cases is None:
      continue
    inputs = [x for x, _ in cases]
    assert [programs._apply(pipeline, x) for x in inputs] == [y for _, y in cases]
    probe = [programs._draw_input(random.Random(f"{i}:{j}"), kind) for j in range(200)]
    want = programs._outputs(pipeline, probe)
    for miss in programs._near_misses(pipeline):
      if programs._outputs(miss, probe) != want:
        total += 1
        weak += programs._outputs(miss, inputs) == programs._outputs(pipeline, inputs)
  assert total > 3000 and weak <= 0.02 * total, (weak, total)


@pytest.mark.parametrize("knobs, message", [
    ({"steps": 0}, r"steps must be an int in \[1, 4\] or a \(min, max\) pair.*got 0"),
    ({"steps": 5}, "steps must be .*got 5"),
    ({"steps": (3, 1)}, r"steps must be .*min <= max, got \(3, 1\)"),
    ({"steps": "2"}, "steps must be .*got '2'"),
    ({"kinds": ("float",)}, r"kinds must be a non-empty tuple of distinct names from "
                            r"\('list', 'str', 'int'\), got \('float',\)"),
    ({"kinds": ()}, "kinds must be a non-empty tuple"),
    ({"formats": ("function", "function")}, "formats must be .*distinct names"),
    ({"formats": ("repl",)}, r"formats must be .*\('function', 'stdio'\), got \('repl',\)"),
    ({"num_tests": 1}, r"num_tests must be an int in \[2, 20\], got 1"),
    ({"num_train": -1}, "num_train must be an int >= 0, got -1"),
    ({"num_test": 2.5}, "num_test must be an int >= 0, got 2.5"),
])
def test_bad_knobs_are_named_with_what_was_expected(knobs, message):
  with pytest.raises(ValueError, match=f"^programs: {message}"):
    get_task("programs", **knobs)


def test_an_exhausted_space_is_reported():
  # One step: under a hundred distinct transformations exist.
  task = get_task("programs", steps=1, num_train=500, num_test=5)
  with pytest.raises(ValueError, match="distinct problems found .* ask for fewer problems"):
    task.problems(TRAIN)


def test_gin_knobs_and_the_task_listing():
  try:
    gin.parse_config("programs_task.steps = (1, 2)\nprograms_task.num_train = 7\n"
                     "programs_task.num_test = 3")
    task = get_task("programs")
    assert task.num_problems(TRAIN) == 7 and task.num_problems(TEST) == 3
    assert task.problems(TRAIN)[0].id.startswith("prog-s1to2-")
  finally:
    gin.clear_config()
  out = io.StringIO()
  assert cli.list_tasks_main(out) == 0
  line = next(l for l in out.getvalue().splitlines() if l.startswith("programs "))
  assert "code" in line and "train=1000, test=200" in line and "raw, 0-shot" in line


@dataclasses.dataclass(frozen=True)
class _ChatTokenizer(ByteTokenizer):

  def apply_chat_template(self, messages, add_generation_prompt=True):
    text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


def test_references_pass_and_wrong_programs_fail_in_the_sandbox():
  problems = _mixed(num_train=8, num_test=2)  # every steps level; kinds and formats mixed
  chat = get_task("programs", prompt_format=PromptFormat(style="chat"), num_train=6,
                  num_test=0, tokenizer=_ChatTokenizer()).problems(TRAIN)
  assert all(p.meta["completion_mode"] == "fenced" and "```python" in p.solution for p in chat)
  right = [verifier_item(p, p.solution) for p in problems + chat]
  # Wrong: a constant answer; the solution of another problem of the same kind and format.
  wrong = []
  for i, p in enumerate(problems):
    fn = p.meta["format"] == "function"
    wrong.append(verifier_item(p, "    return 0\n" if fn else "print(0)\n"))
    other = next(q for q in problems[i + 1:] + problems[:i]
                 if (q.meta["kind"], q.meta["format"]) == (p.meta["kind"], p.meta["format"])
                 and q.meta["pipeline"] != p.meta["pipeline"])
    wrong.append(verifier_item(p, other.solution))
  with VerifierPool(2) as pool:
    verdicts = pool.verify(right + wrong)
  passed = [v.verdict for v in verdicts[:len(right)]]
  assert passed == ["pass"] * len(right), [
      (item, v) for item, v in zip(right, verdicts) if v.verdict != "pass"]
  failed = verdicts[len(right):]
  assert all(v.verdict == "fail" for v in failed), [
      (item, v) for item, v in zip(wrong, failed) if v.verdict != "fail"]

