"""The built-in graded score for ReST: the share of a program's hidden tests it passes."""

import re

import pytest

from rest_jax.rewards import graded
from rest_jax.rewards import sources
from rest_jax.tasks import TRAIN, get_task
from rest_jax.tasks.base import Problem

pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


def _problems(fmt):
  task = get_task("programs", formats=(fmt,), num_train=6, num_test=0, num_tests=4)
  return task.problems(TRAIN)


def _first_case_only(p) -> str:
  """A program right on the first hidden test alone (it hard-codes that case)."""
  if p.meta["format"] == "stdio":
    i0, o0 = p.reference["inputs"][0], p.reference["outputs"][0]
    return f"s = input()\nprint({o0!r} if s.split() == {i0!r}.split() else 'nope')\n"
  var = re.match(r"def f\((\w+)\)", p.prompt).group(1)
  x0, y0 = re.match(r"assert f\((.*)\) == (.*)$", p.reference["test"].splitlines()[0]).groups()
  return f"    return {y0} if {var} == {x0} else None\n"


@pytest.mark.parametrize("fmt", ["stdio", "function"])
def test_partial_credit_on_the_programs_task(fmt):
  problems = _problems(fmt)[:3]
  source = sources.make_reward_source("rest_jax.rewards.graded:fraction_of_tests_passed",
                                      problems={p.id: p for p in problems})
  rows = [{"prompt_id": p.id, "sample_idx": j, "completion": c}
          for p in problems
          for j, c in enumerate([p.solution, _first_case_only(p), "syntax error ("])]
  scores = source.score(rows, desc=False)
  for i, _ in enumerate(problems):
    right, first_only, broken = scores[3 * i: 3 * i + 3]
    assert right == 1.0 and broken == 0.0
    # Hidden tests have distinct inputs, so hard-coding one case earns exactly that case.
    assert first_only == pytest.approx(1 / 4)


def test_an_unsplittable_check_function_is_pass_or_fail_and_math_is_refused():
  check = Problem(id="h", prompt="def f(x):\n", verifier="code", reference={
      "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4\n",
      "entry_point": "f"})
  assert graded.fraction_of_tests_passed(check, "def f(x):\n    return 2 * x\n") == 1.0
  assert graded.fraction_of_tests_passed(check, "def f(x):\n    return 2\n") == 0.0
  with pytest.raises(ValueError, match="scores code problems"):
    graded.fraction_of_tests_passed(Problem(id="m", prompt="1+1", reference="2",
                                            verifier="math"), "2")
