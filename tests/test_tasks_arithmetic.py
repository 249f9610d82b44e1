"""The procedural arithmetic task: seeded, unlimited, prefix-stable, disjoint, correct."""

import re

import pytest

from rest_jax.tasks import TEST, TRAIN, get_task
from rest_jax.tasks import arithmetic


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


_LINE = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def _check_solution(p):
  """The worked solution computes the question's numbers and ends with the reference."""
  lines = p.solution.strip().split("\n")
  assert lines[-1] == f"#### {p.reference}"
  numbers = [int(x) for x in re.findall(r"\d+", p.meta["question"])]
  value = numbers[0]
  for line, n in zip(lines[:-1], numbers[1:]):
    a, op, b, c = _LINE.fullmatch(line).groups()
    a, b, c = int(a), int(b), int(c)
    assert a == value and b == n
    assert c == {"+": a + b, "-": a - b, "*": a * b}[op] and c >= 0
    value = c
  assert str(value) == p.reference
  return len(lines) - 1


def test_problems_are_correct_and_ids_formatted():
  task = get_task("arithmetic", num_train=300, num_test=60)
  assert task.verifier == "math"
  for p in task.problems(TRAIN) + task.problems(TEST):
    assert re.fullmatch(r"arith-d2s2-\d{6}", p.id)
    assert _check_solution(p) == 2
    assert p.meta["question"].endswith("have now?")
    assert len(p.meta["question"]) < 120  # short texts for a byte-level model


def test_seeded_deterministic_and_prefix_stable():
  a = get_task("arithmetic", num_train=40, num_test=10, seed=7)
  b = get_task("arithmetic", num_train=80, num_test=20, seed=7)
  c = get_task("arithmetic", num_train=40, num_test=10, seed=8)
  assert a.problems(TRAIN) == b.problems(TRAIN)[:40]
  assert a.problems(TEST) == b.problems(TEST)[:10]
  assert [p.meta["question"] for p in a.problems(TRAIN)] != [
      p.meta["question"] for p in c.problems(TRAIN)]


def test_train_and_test_never_share_a_computation():
  task = get_task("arithmetic", digits=1, steps=2, num_train=300, num_test=60)

  def key(p):  # the arithmetic, without names and items
    return tuple(p.solution.split("\n"))

  train = {key(p) for p in task.problems(TRAIN)}
  test = [key(p) for p in task.problems(TEST)]
  assert len(set(test)) == len(test) and not train & set(test)
  exemplar_questions = {e.question for e in task.exemplars}
  assert not exemplar_questions & {p.meta["question"] for p in task.problems(TEST)}


@pytest.mark.parametrize("digits", [1, 2, 3, 4])
def test_digits_knob_sets_the_size_of_numbers(digits):
  task = get_task("arithmetic", digits=digits, steps=1, ops="+", num_train=30, num_test=5)
  for p in task.problems(TRAIN):
    start, operand = [int(x) for x in re.findall(r"\d+", p.meta["question"])]
    assert len(str(start)) == digits and len(str(operand)) == digits
    _check_solution(p)


def test_steps_and_ops_knobs():
  task = get_task("arithmetic", steps=4, ops="+-*", num_train=200, num_test=10)
  ops = set()
  for p in task.problems(TRAIN):
    assert _check_solution(p) == 4
    ops |= {m.group(2) for m in _LINE.finditer(p.solution)}
  assert ops == {"+", "-", "*"}
  assert all(" - " not in p.solution for p in get_task("arithmetic", ops="+", num_train=50,
                                                       num_test=5).problems(TRAIN))


def test_bad_knobs_and_exhausted_spaces_are_reported():
  with pytest.raises(ValueError, match="digits must be"):
    get_task("arithmetic", digits=5)
  with pytest.raises(ValueError, match="containing '\\+'"):
    get_task("arithmetic", ops="-*")
  with pytest.raises(ValueError, match="steps must be"):
    get_task("arithmetic", steps=0)
  # 1-digit, 1-step sums: only 81 distinct computations exist.
  task = get_task("arithmetic", digits=1, steps=1, ops="+", num_train=500, num_test=5)
  with pytest.raises(ValueError, match="distinct problems"):
    task.problems(TRAIN)


def test_unlimited_size():
  out = arithmetic.generate(digits=3, steps=3, ops="+-", seed=0, num_train=20000, num_test=2000)
  assert len(out[TRAIN]) == 20000 and len(out[TEST]) == 2000
  assert len({p.id for p in out[TRAIN] + out[TEST]}) == 22000


def test_few_shot_prompt_uses_worked_exemplars():
  from rest_jax.tasks import PromptFormat  # pylint: disable=g-import-not-at-top
  task = get_task("arithmetic", prompt_format=PromptFormat(num_shots=2), num_train=3, num_test=1)
  p = task.problems(TRAIN)[0]
  assert p.prompt.count("Question: ") == 3 and p.prompt.count("#### ") == 2
  assert all(e.solution in p.prompt for e in task.exemplars[:2])


def test_expression_wording_has_the_same_problems_in_short():
  story = get_task("arithmetic", digits=1, steps=2, num_train=20, num_test=5)
  expr = get_task("arithmetic", digits=1, steps=2, num_train=20, num_test=5,
                  wording="expression")
  for a, b in zip(story.problems("train"), expr.problems("train")):
    assert (a.id, a.reference, a.solution) == (b.id, b.reference, b.solution)
    terms = b.meta["question"].split()
    value = int(terms[0])
    for op, n in zip(terms[1::2], terms[2::2]):
      value = value + int(n) if op == "+" else value - int(n)
    assert str(value) == b.reference
  with pytest.raises(ValueError, match="wording"):
    get_task("arithmetic", wording="poem")


def test_asking_for_more_problems_than_exist_is_one_line_and_exit_2(capsys):
  """One-digit two-step sums have 361 distinct test problems: 1000 is refused in one line."""
  from rest_jax import cli
  code = cli.main(["tasks", "--gin_file=runs/demo.gin", "--gin.arithmetic_task.num_test=1000"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].startswith("rest-jax tasks: arithmetic: only 1216 train / 361 test distinct"), err
  assert "arithmetic_task.num_train, num_test" in err[-1]
  assert not any(line.startswith("Traceback") for line in err)


def test_check_work_marks_every_problem_and_reaches_the_verifier_item():
  from rest_jax.loop.generate import verifier_item
  plain = get_task("arithmetic", digits=1, steps=2, num_train=10, num_test=3)
  checked = get_task("arithmetic", digits=1, steps=2, num_train=10, num_test=3, check_work=True)
  for split in (TRAIN, TEST):
    for a, b in zip(plain.problems(split), checked.problems(split)):
      assert (a.id, a.prompt, a.reference, a.solution) == (b.id, b.prompt, b.reference, b.solution)
      assert "check_work" not in verifier_item(a, "x") and verifier_item(b, "x")["check_work"]
