"""The program that runs inside the sandbox and hosts the candidate code.

It is sent as source to a bare `python3 -I -S` in the sandbox, so it imports only the
standard library and nothing of rest_jax (and stays valid on Python >= 3.8). The host side
(`code_harness.py`) imports it too, for the value codec below.

Nothing this process says is trusted: once the candidate has run here it may have rewritten
any of it. The harness on the host treats every reply as a claim about a *value* (decoded
strictly into plain builtins) and decides pass/fail itself, so a forged or garbled reply can
at worst make the candidate fail.

Protocol: requests come in as `<length>\n<marshal bytes>` frames (the host is trusted, and
marshal costs no import); replies go out as one JSON object per line, written by a small
encoder over `_json` so the server starts without importing `json` and `re`. The first
frame in holds the limits; then requests:
  {"op": "load", "source": S}             exec S as a module -> {"ok", "names"}
  {"op": "call", "fn": F, "args": A}      F(*A) (or Solution().F) -> {"ok", "value"}
  {"op": "script", "source": S}           compile S as a stdin/stdout program
  {"op": "run", "stdin": T}               run it in a fresh fork -> {"ok", "stdout", "status"}
"""

import binascii
import builtins
import marshal
import math
import os
import resource
import select
import signal
import sys
from _json import encode_basestring_ascii as _quote

_MAX_DEPTH = 100


def encode(value, depth=0):
  """A plain value as JSON, tagging what JSON cannot say (tuple, set, dict keys, nan...)."""
  if depth > _MAX_DEPTH:
    raise ValueError("value nested too deeply")
  # Subclasses become their plain base type (str.__str__ and int.__index__ copy them).
  if value is None or type(value) is bool:
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__index__(value)
  if isinstance(value, float):
    value = float.__float__(value)
    return value if math.isfinite(value) else {"$f": repr(value)}
  if isinstance(value, complex):
    return {"$c": [encode(value.real), encode(value.imag)]}
  if isinstance(value, (bytes, bytearray)):
    return {"$b": binascii.b2a_base64(bytes(value), newline=False).decode("ascii")}
  if isinstance(value, list):
    return [encode(v, depth + 1) for v in value]
  if isinstance(value, tuple):
    return {"$t": [encode(v, depth + 1) for v in value]}
  if isinstance(value, frozenset):
    return {"$fs": [encode(v, depth + 1) for v in value]}
  if isinstance(value, set):
    return {"$s": [encode(v, depth + 1) for v in value]}
  if isinstance(value, dict):
    return {"$d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
  raise TypeError("a value of type %s cannot leave the sandbox" % type(value).__name__)


def decode(obj, depth=0):
  """The inverse of `encode`, strict: anything but the tagged forms is rejected."""
  if depth > _MAX_DEPTH:
    raise ValueError("value nested too deeply")
  if obj is None or type(obj) in (bool, int, float, str):
    return obj
  if type(obj) is list:
    return [decode(v, depth + 1) for v in obj]
  if type(obj) is dict and len(obj) == 1:
    (tag, body), = obj.items()
    if tag == "$f" and body in ("nan", "inf", "-inf"):
      return float(body)
    if tag == "$c" and type(body) is list and len(body) == 2:
      return complex(decode(body[0], depth + 1), decode(body[1], depth + 1))
    if tag == "$b" and type(body) is str:
      return binascii.a2b_base64(body.encode("ascii"))
    if type(body) is list:
      items = [decode(v, depth + 1) for v in body]
      if tag == "$t":
        return tuple(items)
      if tag == "$s":
        return set(items)
      if tag == "$fs":
        return frozenset(items)
      if tag == "$d" and all(type(p) is list and len(p) == 2 for p in items):
        return {k: v for k, v in items}
  raise ValueError("malformed value from the sandbox")


def dumps(obj):
  """JSON text of what `encode` returns (and of the server's own replies)."""
  if obj is None:
    return "null"
  if obj is True:
    return "true"
  if obj is False:
    return "false"
  kind = type(obj)
  if kind is str:
    return _quote(obj)
  if kind is int:
    return int.__repr__(obj)
  if kind is float:
    return float.__repr__(obj)  # finite: encode() tags nan and inf
  if kind is list:
    return "[" + ",".join([dumps(v) for v in obj]) + "]"
  if kind is dict:
    return "{" + ",".join([_quote(k) + ":" + dumps(v) for k, v in obj.items()]) + "}"
  raise TypeError("cannot write %s as JSON" % kind.__name__)


def _describe(exc):
  try:
    return type(exc).__name__, str.__str__(str(exc))[:500]
  except BaseException:  # a hostile __str__
    return "Exception", "<unprintable>"


class _Server:

  def __init__(self, reader, out_fd, limits):
    self.reader, self.out_fd, self.limits = reader, out_fd, limits
    self.module = None
    self.script = None
    self.stdin_path = os.path.join(os.getcwd(), ".stdin")  # /tmp/.stdin in the sandbox

  def reply(self, obj):
    try:
      text = dumps(obj)
    except (TypeError, ValueError, RecursionError) as e:  # e.g. an int too long to print
      text = dumps({"ok": False, "exc": "TypeError", "msg": "the result cannot be sent: %s" % e})
    data = (text + "\n").encode()
    while data:
      data = data[os.write(self.out_fd, data):]

  def load(self, req):
    module = {"__name__": "__candidate__", "__builtins__": builtins}
    exec(compile(req["source"], "<candidate>", "exec"), module)
    self.module = module
    names = sorted(k for k, v in module.items() if callable(v) and not k.startswith("__"))
    return {"ok": True, "names": names}

  def call(self, req):
    name = req["fn"]
    fn = self.module.get(name) if self.module is not None else None
    solution = self.module.get("Solution") if self.module is not None else None
    if not callable(fn) and isinstance(solution, type) and hasattr(solution, name):
      fn = getattr(solution(), name)  # APPS/LeetCode call-based style
    if not callable(fn):
      return {"ok": False, "exc": "NameError", "msg": "%s is not defined by the program" % name}
    args, kwargs = req.get("args", ()), req.get("kwargs", {})
    try:
      result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: B036 - SystemExit from the candidate is its failure too
      exc, msg = _describe(e)
      return {"ok": False, "exc": exc, "msg": msg}
    try:
      return {"ok": True, "value": encode(result)}
    except (TypeError, ValueError, RecursionError) as e:
      return {"ok": False, "exc": "TypeError", "msg": str(e)}

  def compile_script(self, req):
    self.script = compile(req["source"], "<candidate>", "exec")
    return {"ok": True}

  def run(self, req):
    """Runs the script in a fresh fork with `stdin`, returning its capped stdout."""
    with open(self.stdin_path, "w") as f:
      f.write(req["stdin"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
      self._child(out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    cap = self.limits["max_output_bytes"]
    out, err, status = bytearray(), bytearray(), None
    open_fds = [out_r, err_r]
    while len(out) <= cap:
      ready = select.select(open_fds, [], [], 0.05)[0] if open_fds else []
      for fd in ready:
        chunk = os.read(fd, 65536)
        if not chunk:
          open_fds.remove(fd)
        elif fd == out_r:
          out += chunk
        else:
          err = (err + chunk)[-4096:]
      if status is None:
        # Blocking only once its pipes are closed; the host's deadline bounds the wait.
        done, raw = os.waitpid(pid, os.WNOHANG if open_fds else 0)
        if done:
          status = os.waitstatus_to_exitcode(raw) if hasattr(os, "waitstatus_to_exitcode") else raw
      elif not ready:  # exited, and its pipes closed or quiet (a descendant may hold them)
        break
    self._kill_group(pid)
    if status is None:
      status = -9
    for fd in (out_r, err_r):
      os.close(fd)
    if len(out) > cap:
      return {"ok": False, "exc": "OutputLimit", "msg": "stdout exceeded %d bytes" % cap}
    return {"ok": True, "stdout": out.decode("utf-8", "replace"), "status": status,
            "stderr": err.decode("utf-8", "replace")}

  def _kill_group(self, pid):
    try:
      os.killpg(pid, signal.SIGKILL)
    except OSError:
      pass
    try:
      os.waitpid(pid, 0)
    except ChildProcessError:
      pass

  def _child(self, out_w, err_w):
    status = 1
    try:
      os.setpgid(0, 0)
      os.dup2(os.open(self.stdin_path, os.O_RDONLY), 0)
      os.dup2(out_w, 1)
      os.dup2(err_w, 2)
      os.closerange(3, 1 << 16)  # the protocol pipes stay with the server
      sys.stdin = open(0, "r", closefd=False)
      sys.stdout = open(1, "w", closefd=False)
      sys.stderr = open(2, "w", closefd=False)
      try:
        exec(self.script, {"__name__": "__main__", "__builtins__": builtins})
        status = 0
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
          print(e.code, file=sys.stderr)
      except BaseException:
        import traceback  # only the failing child pays for it
        traceback.print_exc()
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(status)

  def serve(self):
    ops = {"load": self.load, "call": self.call, "script": self.compile_script, "run": self.run}
    while True:
      header = self.reader.readline()
      if not header:
        return
      req = marshal.loads(self.reader.read(int(header)))
      try:
        result = ops[req["op"]](req)
      except BaseException as e:  # noqa: B036 - the candidate's import-time SystemExit included
        exc, msg = _describe(e)
        result = {"ok": False, "exc": exc, "msg": msg}
      self.reply(result)


def _apply_limits(limits):
  mb = 1 << 20
  for name, value in (("RLIMIT_AS", limits["memory_mb"] * mb),
                      ("RLIMIT_CPU", limits["cpu_s"]),
                      ("RLIMIT_FSIZE", limits["file_mb"] * mb),
                      ("RLIMIT_NPROC", limits["max_procs"]),
                      ("RLIMIT_NOFILE", limits["max_open_files"]),
                      ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, name), (value, value))


def main():
  # Keep the protocol on private descriptors; the candidate's prints go to /dev/null and
  # its input() sees end-of-file.
  reader = os.fdopen(os.dup(0), "rb")
  out_fd = os.dup(1)
  devnull = os.open("/dev/null", os.O_RDWR)
  os.dup2(devnull, 0)
  os.dup2(devnull, 1)
  # The host waits for this before sending more, so no request sits in the bootstrap's
  # stdin buffer; the limits are the first line it sends, applied before any candidate code.
  os.write(out_fd, b'{"ok": true, "ready": true}\n')
  limits = marshal.loads(reader.read(int(reader.readline())))
  _apply_limits(limits)
  _Server(reader, out_fd, limits).serve()


if __name__ == "__main__":
  main()
