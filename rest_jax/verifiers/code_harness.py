"""Code test harnesses: the host decides pass or fail; the sandbox only computes values.

The candidate program runs in the sandbox (`sandbox.py`); the tests run here, on the host,
in a separate process from the candidate. Every call a test makes to a candidate function
is forwarded to the sandbox and its result comes back as plain data (int, str, list, tuple,
dict, ...; see `_sandbox_server.encode`). So the verdict cannot be forged from inside: a
program that exits early, prints "OK", redefines `check`, patches `assert` or
`AssertionError`, or returns an object whose `__eq__` is always true gains nothing, and
the program's exit code is never consulted for function tests.

Test formats (`tests`):
  {"test": CODE, "entry_point": NAME}   HumanEval (CODE defines `check(candidate)`) or MBPP
                                        (CODE holds asserts calling NAME directly); CODE may
                                        also be a list of assert lines. Optional "setup".
  {"inputs": [...], "outputs": [...]}   APPS standard input/output: each input is fed to a
                                        fresh run; outputs match when their whitespace-separated
                                        tokens are equal and the program exits with status 0.
  {"inputs", "outputs", "fn_name"}      APPS call-based: fn_name(*inputs[i]) (or
                                        Solution().fn_name) must equal outputs[i] (tuples
                                        compare as lists; [x] also matches x, as in APPS).

Code extraction from a completion (`extract_code`): when the completion holds markdown
fences, the program is the last ```python (or unlabelled) block that defines the entry
point, else the longest such block (an unclosed fence runs to the end); without fences the
completion is the program. For HumanEval, the program is the prompt followed by that code,
so both a bare function body and a full function definition work.
"""

from __future__ import annotations

import builtins
import re
import signal
import threading
import time
import types

from rest_jax.verifiers._sandbox_server import decode
from rest_jax.verifiers.sandbox import (Sandbox, SandboxConfig, SandboxError, SandboxExited,
                                        SandboxOutputLimit, SandboxTimeout, SandboxUnavailable)
from rest_jax.verifiers.verdict import Verdict

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_LANGS = ("", "python", "py", "python3")


def _defines(code: str, name: str) -> bool:
  return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def extract_code(completion: str, entry_point: str | None = None) -> str:
  """The program a completion contains (rule in the module docstring)."""
  blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(completion)]
  if not blocks:
    return completion
  python = [body for lang, body in blocks if lang in _PYTHON_LANGS] or [b for _, b in blocks]
  if entry_point:
    defining = [b for b in python if _defines(b, entry_point)]
    if defining:
      return defining[-1]
  return max(python, key=len)


def build_program(completion: str, tests: dict, prompt: str | None = None) -> str:
  code = extract_code(completion, tests.get("entry_point") or tests.get("fn_name"))
  if prompt and tests.get("entry_point"):
    # A full definition follows the prompt (its helpers stay defined); a body continues it.
    return prompt + ("\n" + code if _defines(code, tests["entry_point"]) else code)
  return code


class _Abort(BaseException):
  """Ends a test run; a BaseException so `except Exception` in test code cannot swallow it."""

  def __init__(self, error: SandboxError):
    super().__init__(str(error))
    self.error = error


class CandidateError(Exception):
  """An exception the candidate raised that has no builtin counterpart here."""


def _candidate_exception(reply: dict) -> Exception:
  name, msg = str(reply.get("exc", "Exception")), str(reply.get("msg", ""))[:500]
  cls = getattr(builtins, name, None)
  if isinstance(cls, type) and issubclass(cls, Exception):
    return cls(msg)
  return CandidateError(f"{name}: {msg}")


class _Run:
  """What a test run has seen: calls answered, and the first failure of the channel.

  The failure is kept here as well as raised, so that a test catching everything (a bare
  `except:`) cannot turn a dead or overrunning program into a pass.
  """

  def __init__(self):
    self.calls = 0
    self.error: SandboxError | None = None

  def abort(self, error: SandboxError) -> "_Abort":
    self.error = self.error or error
    return _Abort(error)


class _Remote:
  """Stands for a function of the candidate; calls go to the sandbox, plain data comes back."""

  def __init__(self, sandbox: Sandbox, name: str, run: _Run):
    self._sandbox, self.__name__, self._run = sandbox, name, run

  def __call__(self, *args, **kwargs):
    try:
      reply = self._sandbox.request({"op": "call", "fn": self.__name__, "args": args,
                                     "kwargs": kwargs})
    except ValueError as e:
      raise TypeError(f"a test argument cannot be sent to the sandbox: {e}") from None
    except SandboxError as e:
      raise self._run.abort(e) from None
    self._run.calls += 1
    if not reply.get("ok"):
      raise _candidate_exception(reply)
    try:
      return decode(reply.get("value"))
    except (ValueError, TypeError, RecursionError) as e:
      raise self._run.abort(SandboxExited(f"the program sent a malformed value: {e}")) from None


class _Deadline:
  """Raises _Abort(SandboxTimeout) in this thread at the deadline, where signals allow."""

  def __init__(self, seconds: float, run: _Run):
    self.seconds, self.run = seconds, run
    self.armed = (threading.current_thread() is threading.main_thread()
                  and signal.getitimer(signal.ITIMER_REAL)[0] == 0)

  def _fire(self, *_):
    raise self.run.abort(SandboxTimeout(f"tests did not finish within {self.seconds:g}s"))

  def __enter__(self):
    if self.armed:
      self.previous = signal.signal(signal.SIGALRM, self._fire)
      signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
    return self

  def __exit__(self, *exc):
    if self.armed:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, self.previous)


def _first_line(exc: BaseException) -> str:
  text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
  return text.splitlines()[0][:300] if text else type(exc).__name__


def _referenced_names(code: types.CodeType) -> set[str]:
  names = set(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names |= _referenced_names(const)
  return names


def _run_function_tests(sb: Sandbox, run: _Run, program: str, tests: dict,
                        prompt: str | None) -> Verdict:
  entry = tests.get("entry_point")
  loaded = sb.request({"op": "load", "source": program})
  if not loaded.get("ok"):
    return Verdict("fail", program, f"program raised {loaded.get('exc')}: {loaded.get('msg')}")
  names = loaded.get("names")
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    return Verdict("fail", program, "the program garbled the harness channel")
  if entry and entry not in names:
    return Verdict("fail", program, f"the program does not define {entry}()")
  namespace = {"__name__": "__test__", "__builtins__": builtins}
  if prompt and entry:
    try:  # trusted helpers the tests call (HumanEval/32's poly) come from the prompt itself
      exec(compile(prompt, "<prompt>", "exec"), namespace)
    except Exception:  # noqa: BLE001 - a prompt that is not Python defines nothing
      namespace = {"__name__": "__test__", "__builtins__": builtins}
  test = tests["test"] if isinstance(tests["test"], str) else "\n".join(tests["test"])
  code = compile(tests.get("setup", "") + "\n" + test, "<tests>", "exec", optimize=0)
  # Only names the tests use and nothing else defines become calls into the sandbox: a
  # program defining `abs` or `len` must not answer the tests' own calls to them.
  for name in set(names) & _referenced_names(code):
    if name not in namespace and not hasattr(builtins, name):
      namespace[name] = _Remote(sb, name, run)
  if entry:
    namespace[entry] = _Remote(sb, entry, run)
  exec(code, namespace)
  if "check" in namespace and entry and callable(namespace["check"]):
    namespace["check"](namespace[entry])
  if run.error:
    raise _Abort(run.error)
  if run.calls == 0:
    return Verdict("fail", program, "the tests never called the program")
  return Verdict("pass", program, f"all tests passed ({run.calls} calls)")


def _same_call_output(got, expected) -> bool:
  def lists(v):
    return [lists(x) for x in v] if isinstance(v, (list, tuple)) else v
  got, expected = lists(got), lists(expected)
  return got == expected or (isinstance(expected, list) and len(expected) == 1
                             and got == expected[0])


def _as_text(value) -> str:
  return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _run_io_tests(sb: Sandbox, run: _Run, program: str, tests: dict) -> Verdict:
  inputs, outputs, fn_name = tests["inputs"], tests["outputs"], tests.get("fn_name")
  if fn_name:
    loaded = sb.request({"op": "load", "source": program})
    if not loaded.get("ok"):
      return Verdict("fail", program, f"program raised {loaded.get('exc')}: {loaded.get('msg')}")
    for i, (args, expected) in enumerate(zip(inputs, outputs)):
      got = _Remote(sb, fn_name, run)(*(args if isinstance(args, list) else [args]))
      if not _same_call_output(got, expected):
        return Verdict("fail", program,
                       f"test {i}: expected {str(expected)[:100]}, got {str(got)[:100]}")
    return Verdict("pass", program, f"passed {len(inputs)}/{len(inputs)} tests")
  compiled = sb.request({"op": "script", "source": program})
  if not compiled.get("ok"):
    return Verdict("fail", program,
                   f"program does not compile: {compiled.get('exc')}: {compiled.get('msg')}")
  for i, (stdin, expected) in enumerate(zip(inputs, outputs)):
    result = sb.request({"op": "run", "stdin": _as_text(stdin)})
    if not result.get("ok"):
      raise SandboxOutputLimit(str(result.get("msg"))) if result.get("exc") == "OutputLimit" else (
          SandboxExited(f"harness error: {result.get('msg')}"))
    stdout, status = result.get("stdout"), result.get("status")
    if not isinstance(stdout, str):
      return Verdict("fail", program, "the program garbled the harness channel")
    if status != 0:
      err = str(result.get("stderr", "")).strip().splitlines()
      return Verdict("fail", program,
                     f"test {i}: exit status {status}; {err[-1][:200] if err else ''}")
    if stdout.split() != _as_text(expected).split():
      return Verdict("fail", program,
                     f"test {i}: expected {_as_text(expected)[:80]!r}, got {stdout[:80]!r}")
  return Verdict("pass", program, f"passed {len(inputs)}/{len(inputs)} tests")


def _error_verdict(error: SandboxError, program: str, start: float,
                   config: SandboxConfig) -> Verdict:
  if isinstance(error, SandboxTimeout):
    return Verdict("timeout", program, f"timed out after {time.monotonic() - start:.1f}s "
                   f"(deadline {config.deadline_s:g}s)")
  return Verdict("fail", program, str(error))


def _check_tests(tests) -> str | None:
  """Why `tests` is malformed, or None."""
  if not isinstance(tests, dict):
    return f"tests must be a JSON object, got {type(tests).__name__}"
  if "test" in tests:
    if not isinstance(tests["test"], (str, list)):
      return "tests['test'] must be Python source (a string or a list of lines)"
    return None
  if "inputs" in tests and "outputs" in tests:
    if not isinstance(tests["inputs"], list) or not isinstance(tests["outputs"], list):
      return "tests['inputs'] and tests['outputs'] must be lists"
    if len(tests["inputs"]) != len(tests["outputs"]) or not tests["inputs"]:
      return "tests['inputs'] and tests['outputs'] must be non-empty and of equal length"
    return None
  return ('tests must be {"test": ..., "entry_point": ...} or {"inputs": [...], "outputs": '
          f'[...]}} (optionally with "fn_name"), got keys {sorted(tests)}')


_spare: Sandbox | None = None
_spare_lock = threading.Lock()


def _open_sandbox(config: SandboxConfig, prestart: bool) -> Sandbox:
  """A sandbox for this run; with `prestart`, also boots the next run's in the background."""
  global _spare
  with _spare_lock:
    spare, _spare = _spare, None
    if spare is not None and (spare.config != config or spare.exited()):
      spare.close()
      spare = None
    sandbox = spare or Sandbox(config, begin=False)
    if prestart:
      try:
        _spare = Sandbox(config, begin=False)
      except SandboxUnavailable:
        sandbox.close()
        raise
  return sandbox


def close_spare():
  """Stops the sandbox booted ahead for the next call, if any (a worker does this on exit)."""
  global _spare
  with _spare_lock:
    spare, _spare = _spare, None
  if spare is not None:
    spare.close()


def check_code(completion: str, tests: dict, *, prompt: str | None = None,
               config: SandboxConfig | None = None, prestart: bool = False) -> Verdict:
  """Runs a completion's program against `tests` in the sandbox; returns the verdict.

  Raises SandboxUnavailable when no sandbox can run at all (bwrap missing or refused): that
  is the machine's problem, not the completion's, and must not quietly zero every reward.
  prestart: keep one sandbox booting for the next call (what pool workers do).
  """
  config = config or SandboxConfig()
  problem = _check_tests(tests)
  if problem is None and not isinstance(completion, str):
    problem = f"completion must be a string, got {type(completion).__name__}"
  if problem:
    return Verdict("error", None, problem)
  program = build_program(completion, tests, prompt)
  if not program.strip():
    return Verdict("fail", program, "no code in the completion")
  start = time.monotonic()
  run = _Run()
  try:
    with _open_sandbox(config, prestart) as sb, _Deadline(config.deadline_s + 0.2, run):
      sb.begin()
      if "test" in tests:
        return _run_function_tests(sb, run, program, tests, prompt)
      return _run_io_tests(sb, run, program, tests)
  except SandboxUnavailable:
    raise
  except (_Abort, SandboxError) as e:
    return _error_verdict(e.error if isinstance(e, _Abort) else e, program, start, config)
  except Exception as e:  # noqa: BLE001 - a failing assert or any error raised by the tests
    if run.error:  # the test turned a dead channel into some other exception
      return _error_verdict(run.error, program, start, config)
    return Verdict("fail", program, _first_line(e))
