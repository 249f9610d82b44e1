"""Built-in graded scores for ReST's thresholds (`ReSTConfig.reward`), each a
`function(problem, completion) -> float` like a user's own.

The original ReST filtered translations on a graded metric rather than a pass/fail one. For
code, the graded counterpart of the verifier is partial credit: the share of the hidden tests
a program passes. A program that gets 3 of 4 cases right is closer than one that gets none,
and a threshold on this score can tell them apart where the verifier gives both 0.
"""

from __future__ import annotations

from rest_jax.verifiers import code_harness


def _single_tests(tests: dict) -> list[dict] | None:
  """`tests` split into one test each, or None when they cannot be split (a HumanEval
  `check(candidate)` function is one opaque test)."""
  if "inputs" in tests and "outputs" in tests:
    return [{**tests, "inputs": [i], "outputs": [o]}
            for i, o in zip(tests["inputs"], tests["outputs"])]
  test = tests.get("test")
  if isinstance(test, list):
    lines = test
  elif isinstance(test, str) and "def check" not in test:
    lines = [line for line in test.splitlines() if line.strip()]
  else:
    return None
  if not lines or not all(line.lstrip().startswith("assert") for line in lines):
    return None   # setup lines between asserts: not independent tests
  return [{**tests, "test": line} for line in lines]


def fraction_of_tests_passed(problem, completion: str) -> float:
  """The share of `problem`'s hidden tests that `completion`'s program passes, each run on its
  own in the sandbox (a crash or timeout in one case costs that case only). Tests that
  cannot be split score 1.0 on a pass and 0.0 otherwise."""
  if problem.verifier != "code":
    raise ValueError(f"fraction_of_tests_passed scores code problems; {problem.id!r} is "
                     f"checked by the {problem.verifier!r} verifier")
  tests = problem.reference
  # As the verifier runs it (loop/generate.verifier_item): a continuation follows its prompt.
  prompt = (problem.meta.get("code_prompt")
            if problem.meta.get("completion_mode") == "continuation" else None)
  cases = _single_tests(tests) or [tests]
  passed = sum(code_harness.check_code(completion, case, prompt=prompt, prestart=True).passed
               for case in cases)
  return passed / len(cases)
