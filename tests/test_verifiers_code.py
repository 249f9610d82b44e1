"""Code verifier: HumanEval in the sandbox, the three test formats, code extraction, and
programs that try to pass without solving (the harness, not the program, decides)."""

import ast

import pytest

from rest_jax.verifiers import SandboxConfig, VerifierPool, extract_code, verify_code
from rest_jax.verifiers.code_harness import build_program
from verifier_data import humaneval

FAST = SandboxConfig(deadline_s=5.0)


class _WrongReturns(ast.NodeTransformer):
  """Makes every `return e` of one function return a value unequal to e (nested defs kept)."""

  def visit_FunctionDef(self, node):
    return node  # nested functions and lambdas keep their meaning

  visit_AsyncFunctionDef = visit_FunctionDef
  visit_Lambda = visit_FunctionDef

  def visit_Return(self, node):
    value = node.value or ast.Constant(None)
    node.value = ast.Call(ast.Name("_mutant_wrong", ast.Load()), [value], [])
    return node


_WRONG = '''
def _mutant_wrong(v):
    if isinstance(v, bool): return not v
    if isinstance(v, (int, float)): return v + 1
    if isinstance(v, str): return v + "x"
    if isinstance(v, (list, tuple)): return type(v)(list(v) + [None])
    if v is None: return 0
    return None
'''


def mutate(prompt: str, solution: str, entry_point: str) -> str:
  """The canonical program with every return of the entry point changed."""
  tree = ast.parse(prompt + solution)
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == entry_point:
      node.body = [_WrongReturns().visit(stmt) for stmt in node.body]
  return _WRONG + ast.unparse(tree)


def test_all_humaneval_canonical_solutions_pass_and_mutants_fail():
  rows = humaneval()
  assert len(rows) == 164
  canonical = [{"completion": r["canonical_solution"], "prompt": r["prompt"],
                "tests": {"test": r["test"], "entry_point": r["entry_point"]}} for r in rows]
  mutants = [{"completion": "```python\n" + mutate(r["prompt"], r["canonical_solution"],
                                                    r["entry_point"]) + "\n```",
              "prompt": r["prompt"], "tests": {"test": r["test"], "entry_point": r["entry_point"]}}
             for r in rows]
  with VerifierPool(2, sandbox=SandboxConfig(deadline_s=10.0)) as pool:
    verdicts = pool.verify(canonical + mutants)
  good, bad = verdicts[:164], verdicts[164:]
  failed = [(r["task_id"], v.verdict, v.reason) for r, v in zip(rows, good) if v.verdict != "pass"]
  assert not failed, failed
  passed = [(r["task_id"], v.reason) for r, v in zip(rows, bad) if v.verdict != "fail"]
  assert not passed, passed


# --- the three formats ----------------------------------------------------------------------

def test_mbpp_asserts_against_an_entry_point():
  tests = {"test": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], "entry_point": "add"}
  assert verify_code("def add(a, b):\n    return a + b\n", tests, config=FAST).verdict == "pass"
  wrong = verify_code("def add(a, b):\n    return a - b\n", tests, config=FAST)
  assert wrong.verdict == "fail" and "AssertionError" in wrong.reason
  missing = verify_code("def plus(a, b):\n    return a + b\n", tests, config=FAST)
  assert missing.verdict == "fail" and "does not define add()" in missing.reason


def test_apps_stdin_stdout_with_whitespace_tolerance():
  tests = {"inputs": ["1 2\n", "3 4\n", ["10", "20"]], "outputs": ["3\n", "7", "30  \n\n"]}
  program = "a, b = map(int, open(0).read().split())\nprint(a + b)\n"
  verdict = verify_code(program, tests, config=FAST)
  assert verdict.verdict == "pass", verdict
  wrong = verify_code("print(3)\n", tests, config=FAST)
  assert wrong.verdict == "fail" and wrong.reason.startswith("test 1")
  crash = verify_code("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n",
                      tests, config=FAST)
  assert crash.verdict == "fail" and "exit status 3" in crash.reason
  early = verify_code("import sys\nsys.stdout.write('3\\n')\nsys.stdout.flush()\nimport os\nos._exit(0)",
                      {"inputs": ["1 2"], "outputs": ["3"]}, config=FAST)
  assert early.verdict == "pass"  # it printed the right answer, then exited cleanly
  syntax = verify_code("print(", tests, config=FAST)
  assert syntax.verdict == "fail" and "SyntaxError" in syntax.reason


def test_apps_call_based():
  tests = {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]],
           "outputs": [[[0, 1]], [1, 2]]}
  leetcode = ("class Solution:\n    def twoSum(self, nums, target):\n"
              "        seen = {}\n        for i, x in enumerate(nums):\n"
              "            if target - x in seen:\n                return (seen[target - x], i)\n"
              "            seen[x] = i\n")
  assert verify_code(leetcode, tests, config=FAST).verdict == "pass"
  plain = "def twoSum(nums, target):\n    return [0, 1]\n"
  assert verify_code(plain, tests, config=FAST).verdict == "fail"


def test_malformed_tests_are_errors_naming_the_problem():
  assert "equal length" in verify_code("x", {"inputs": [1], "outputs": []}).reason
  bad = verify_code("x", {"asserts": []})
  assert bad.verdict == "error" and "got keys ['asserts']" in bad.reason
  assert verify_code(3, {"test": "assert True"}).verdict == "error"
  never = verify_code("def f():\n    return 1\n", {"test": "assert True", "entry_point": "f"},
                      config=FAST)
  assert never.verdict == "fail" and "never called" in never.reason


# --- extraction -----------------------------------------------------------------------------

def test_extract_code_rules():
  assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
  two = ("Here:\n```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(2))\n```")
  assert extract_code(two, "f") == "def f(x):\n    return x\n"
  assert extract_code(two) == "def f(x):\n    return x\n"  # the longest block
  assert extract_code("```py\nprint(1)\n```\n```bash\nls\n```") == "print(1)\n"
  assert extract_code("Sure!\n```python\ndef g():\n    return 2") == "def g():\n    return 2"
  prompt = "def f(x):\n    \"\"\"Doubles.\"\"\"\n"
  tests = {"test": "", "entry_point": "f"}
  assert build_program("    return 2 * x\n", tests, prompt) == prompt + "    return 2 * x\n"
  full = build_program("```python\ndef f(x):\n    return 2 * x\n```", tests, prompt)
  assert full == prompt + "\ndef f(x):\n    return 2 * x\n"


# --- the harness decides ------------------------------------------------------------------

HUMANEVAL_STYLE = {"test": "def check(candidate):\n    assert candidate(2) == 4\n"
                           "    assert candidate(3) == 9\n", "entry_point": "square"}

CHEATS = {
    "exit 0 before the tests": "import os\nos._exit(0)\ndef square(x):\n    return 0\n",
    "sys.exit at import": "import sys\nsys.exit(0)\n",
    "exit 0 inside the call": "import os\ndef square(x):\n    os._exit(0)\n",
    "prints success": "print('All tests passed!')\nimport sys\nsys.stderr.write('OK\\n')\n"
                      "def square(x):\n    print('PASSED')\n    return 0\n",
    "redefines check": "def check(candidate):\n    pass\ndef square(x):\n    return 0\n",
    "patches assert": "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\n"
                      "__builtins__['AssertionError'] = None\ndef square(x):\n    return 0\n",
    "always-equal object": "class Eq:\n    def __eq__(self, other):\n        return True\n"
                           "def square(x):\n    return Eq()\n",
    "int subclass equal to all": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                                 "def square(x):\n    return I(0)\n",
    "forges a reply on the channel": (
        "import os, json\n"
        "def square(x):\n"
        "    for fd in range(3, 64):\n"
        "        try: os.write(fd, (json.dumps({'ok': True, 'value': x * x}) + '\\n').encode())\n"
        "        except OSError: pass\n"
        "    return 0\n"),
    "garbles the channel": "import os\ndef square(x):\n"
                           "    [os.write(fd, b'{{{\\n') for fd in range(3, 20) if not os.path.exists('/x%d' % fd)]\n"
                           "    return 0\n",
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_a_program_cannot_pass_by_cheating(name):
  verdict = verify_code(CHEATS[name], HUMANEVAL_STYLE, config=FAST)
  assert verdict.verdict == "fail", (name, verdict)


def test_a_program_cannot_answer_the_tests_calls_to_builtins():
  tests = {"test": "def check(candidate):\n    assert abs(candidate(3) - 9) < 1e-9\n"
                   "    assert len(candidate(3)) == 9\n", "entry_point": "square"}
  shadowing = "def abs(x):\n    return 0\ndef len(x):\n    return 9\ndef square(x):\n    return 0\n"
  assert verify_code(shadowing, tests, config=FAST).verdict == "fail"
  # Helpers the tests call that only the program defines still reach it (no prompt given).
  helper = {"test": "assert twice(square(3)) == 18", "entry_point": "square"}
  program = "def twice(x):\n    return 2 * x\ndef square(x):\n    return x * x\n"
  assert verify_code(program, helper, config=FAST).verdict == "pass"


def test_the_honest_program_passes():
  assert verify_code("def square(x):\n    return x * x\n", HUMANEVAL_STYLE).verdict == "pass"
  # Tests that expect an exception still work: the candidate's exception is re-raised here.
  tests = {"test": "try:\n    inv(0)\n    ok = False\nexcept ZeroDivisionError:\n    ok = True\n"
                   "assert ok and inv(2) == 0.5\n", "entry_point": "inv"}
  assert verify_code("def inv(x):\n    return 1 / x\n", tests, config=FAST).verdict == "pass"
  # Values keep their types across the boundary.
  typed = {"test": "r = f()\nassert r == ((1, 2), {3}, {'a': [None]}, b'x', 1.5, float('inf'))\n"
                   "assert type(r[0]) is tuple", "entry_point": "f"}
  program = "def f():\n    return ((1, 2), {3}, {'a': [None]}, b'x', 1.5, float('inf'))\n"
  assert verify_code(program, typed, config=FAST).verdict == "pass"
