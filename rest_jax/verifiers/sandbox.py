"""The sandbox: one bubblewrap container per program, talked to over pipes.

What a program inside sees and may do:
  * new user, pid, network, ipc, uts and cgroup namespaces: no network at all (not even
    loopback to the host), no other process of the host visible or signalable;
  * a read-only view of /usr (the interpreter and its shared libraries) and nothing else of
    the host: no /home, /root, /etc, /work, no environment variables of the parent;
  * a private writable tmpfs at /tmp (`tmpfs_mb`), a 1 MiB /dev/shm, everything else read-only;
  * rlimits on address space, CPU seconds, file size, processes and open files, applied by
    the harness server before any candidate code runs; when the host runs as root the
    sandbox also runs as a dedicated unprivileged uid, so RLIMIT_NPROC holds (root ignores it);
  * a wall-clock deadline after which the container's pid-1 is SIGKILLed, which makes the
    kernel kill every process in its pid namespace (daemons included) before bwrap exits;
  * capped stdout/stderr: a reply or stderr stream longer than `max_output_bytes` ends the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import marshal
import math
import os
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import gin

logger = logging.getLogger(__name__)

_SERVER_SOURCE = (pathlib.Path(__file__).parent / "_sandbox_server.py").read_bytes()
# Reads the server's source from stdin and runs it: nothing needs to be on the sandbox's disk.
_BOOT = ("import sys;r=sys.stdin.buffer;n=int(r.readline());"
         "exec(compile(r.read(n),'<harness>','exec'))")

INSTALL_HELP = (
    "bubblewrap (`bwrap`) is needed to run model-written code in a sandbox. Install it with "
    "`sudo apt-get install bubblewrap` (Debian/Ubuntu; `dnf install bubblewrap` on Fedora), "
    "or point SandboxConfig.bwrap at it. Only for code you trust, "
    "SandboxConfig(unsafe_run_without_sandbox=True) runs programs directly on this host.")


# Processes of the sandbox uid that are not the program's: bwrap, the container's pid 1 and
# the harness server, for this run and for the spare a worker boots ahead.
_HARNESS_PROCS = 6
_warned_unsafe = False


class SandboxUnavailable(RuntimeError):
  """The sandbox cannot be started at all (bwrap missing or refused by the kernel)."""


class SandboxError(Exception):
  """A run ended without a well-formed reply; the harness turns these into verdicts."""


class SandboxTimeout(SandboxError):
  pass


class SandboxExited(SandboxError):
  pass


class SandboxOutputLimit(SandboxError):
  pass


# gin-configurable so a run can tighten limits for its task (`SandboxConfig.deadline_s = 4.0`:
# short programs, where a sample stuck in a loop would otherwise hold a worker for 10 s).
@gin.configurable(module="rest_jax.verifiers")
@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits of one sandboxed run. `deadline_s` is wall-clock, from start to last reply."""

  deadline_s: float = 10.0
  memory_mb: int = 1024
  max_procs: int = 8  # processes of the program (the sandbox uid may have 6 more: harness)
  file_mb: int = 16
  tmpfs_mb: int = 64
  max_output_bytes: int = 1 << 20
  max_open_files: int = 256
  bwrap: str = "bwrap"
  python: str | None = None  # default: /usr/bin/python3, else this interpreter's base
  extra_ro_binds: tuple[str, ...] = ()
  # When the host runs as root, programs run as uid_base + pid % 4000: far above the uids of
  # real accounts (Debian: < 60000) and of the usual subordinate-uid ranges.
  uid_base: int = 1_800_000_000
  unsafe_run_without_sandbox: bool = False


def _sandbox_python(config: SandboxConfig) -> tuple[str, list[str]]:
  """The interpreter to run inside, and the host directories it needs besides /usr."""
  if config.python:
    python = config.python
  elif os.access("/usr/bin/python3", os.X_OK):
    python = "/usr/bin/python3"
  else:
    python = os.path.realpath(sys.executable)
  real = os.path.realpath(python)
  if real.startswith("/usr/"):
    return python, []
  prefix = sys.base_prefix if real.startswith(os.path.realpath(sys.base_prefix)) else (
      os.path.dirname(os.path.dirname(real)))
  return real, [prefix]


def _root_entries() -> list[str]:
  """bwrap arguments recreating /bin, /lib, ... as on the host (merged-/usr links or dirs)."""
  args = []
  for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
    path = "/" + name
    if os.path.islink(path):
      args += ["--symlink", os.readlink(path), path]
    elif os.path.isdir(path):
      args += ["--ro-bind", path, path]
  return args


def bwrap_command(config: SandboxConfig, info_fd: int) -> list[str]:
  bwrap = shutil.which(config.bwrap)
  if bwrap is None:
    raise SandboxUnavailable(f"`{config.bwrap}` not found on PATH. {INSTALL_HELP}")
  python, binds = _sandbox_python(config)
  cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
         "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
         "--ro-bind", "/usr", "/usr", *_root_entries()]
  for path in [*binds, *config.extra_ro_binds]:
    cmd += ["--ro-bind", path, path]
  cmd += ["--proc", "/proc", "--dev", "/dev",
          "--size", str(config.tmpfs_mb << 20), "--tmpfs", "/tmp",
          "--size", str(1 << 20), "--tmpfs", "/dev/shm",
          "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp",
          "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
          "--setenv", "LANG", "C.UTF-8", "--info-fd", str(info_fd),
          "--", python, "-I", "-S", "-X", "utf8", "-c", _BOOT]
  return cmd


def _processes_of(uid: int) -> int:
  count = 0
  for entry in os.scandir("/proc"):
    if entry.name.isdigit():
      try:
        count += entry.stat().st_uid == uid
      except OSError:
        pass
  return count


class Sandbox:
  """One running container hosting `_sandbox_server.py`. Use as a context manager.

  With `begin=False` the container boots in the background and the deadline starts only
  at `begin()` (or the first request): a worker boots its next sandbox while the current
  one runs, hiding the start-up (namespaces, interpreter) behind useful work.
  """

  def __init__(self, config: SandboxConfig, begin: bool = True):
    self.config = config
    self.deadline = time.monotonic() + config.deadline_s
    self._begun = False
    self._nproc = config.max_procs + _HARNESS_PROCS
    self._out_buf = b""
    self._err_tail = b""
    self._err_total = 0
    self._info_r = None
    self._workdir = None
    self.proc = None
    self._sel = self._wsel = None
    self._launch()
    if begin:
      self.begin()

  def _launch(self):
    config = self.config
    as_root = os.geteuid() == 0
    kwargs = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  start_new_session=True)
    if config.unsafe_run_without_sandbox:
      global _warned_unsafe
      if not _warned_unsafe:  # once per process: every later program runs the same way
        logger.warning("UNSAFE: running model-written programs WITHOUT a sandbox in process %d "
                       "(SandboxConfig.unsafe_run_without_sandbox=True)", os.getpid())
        _warned_unsafe = True
      self._workdir = tempfile.mkdtemp(prefix="rest_jax_unsafe_")
      cmd = [os.path.realpath(sys.executable), "-I", "-S", "-X", "utf8", "-c", _BOOT]
      kwargs.update(cwd=self._workdir, env={"PATH": "/usr/bin:/bin", "HOME": self._workdir})
      self._nproc += _processes_of(os.getuid())
    else:
      info_r, info_w = os.pipe()
      self._info_r = info_r
      try:
        cmd = bwrap_command(config, info_w)
      except SandboxUnavailable:
        os.close(info_w)
        self.close()
        raise
      kwargs.update(cwd="/", env={}, pass_fds=(info_w,))
      if as_root:  # a dedicated uid: no access to root's files, and RLIMIT_NPROC applies
        uid = config.uid_base + os.getpid() % 4000
        kwargs.update(user=uid, group=uid, extra_groups=[])
      else:  # RLIMIT_NPROC counts all of this user's processes
        self._nproc += _processes_of(os.getuid())
    try:
      self.proc = subprocess.Popen(cmd, **kwargs)
    except OSError as e:
      self.close()
      raise SandboxUnavailable(f"could not run {cmd[0]}: {e}. {INSTALL_HELP}") from e
    finally:
      if not config.unsafe_run_without_sandbox:
        os.close(info_w)
    for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
      os.set_blocking(stream.fileno(), False)
    self._sel = selectors.DefaultSelector()
    self._sel.register(self.proc.stdout, selectors.EVENT_READ)
    self._sel.register(self.proc.stderr, selectors.EVENT_READ)
    self._wsel = selectors.DefaultSelector()
    self._wsel.register(self.proc.stdin, selectors.EVENT_WRITE)
    try:
      self._write(b"%d\n%s" % (len(_SERVER_SOURCE), _SERVER_SOURCE))
    except SandboxError as e:
      self.close()
      raise SandboxUnavailable(f"the sandbox did not start: {self.stderr_tail}") from e

  def exited(self) -> bool:
    return self.proc is None or self.proc.poll() is not None

  def begin(self):
    """Starts the deadline, waits until the server is up and applies the limits."""
    if self._begun:
      return
    self._begun = True
    config = self.config
    self.deadline = time.monotonic() + config.deadline_s
    try:
      ready = self._read()
    except SandboxError as e:
      self.close()
      raise SandboxUnavailable(f"the sandbox did not start ({type(e).__name__}): "
                               f"{self.stderr_tail or 'no message'}") from e
    if not ready.get("ready"):
      self.close()
      raise SandboxUnavailable(f"the sandbox did not start: {ready}")
    limits = dict(memory_mb=config.memory_mb, cpu_s=math.ceil(config.deadline_s) + 1,
                  file_mb=config.file_mb, max_procs=self._nproc,
                  max_open_files=config.max_open_files,
                  max_output_bytes=config.max_output_bytes)
    self._send(limits)

  @property
  def stderr_tail(self) -> str:
    return self._err_tail.decode("utf-8", "replace").strip()

  def request(self, obj: dict) -> dict:
    """Sends one request and returns the reply; raises a SandboxError subclass on failure.

    Raises ValueError when `obj` holds something marshal cannot carry (a function, say).
    """
    self.begin()
    self._send(obj)
    return self._read()

  def _send(self, obj: dict):
    data = marshal.dumps(obj)
    self._write(b"%d\n%s" % (len(data), data))

  def _remaining(self) -> float:
    remaining = self.deadline - time.monotonic()
    if remaining <= 0:
      raise SandboxTimeout(f"no reply within {self.config.deadline_s:g}s")
    return remaining

  def _write(self, data: bytes):
    fd = self.proc.stdin.fileno()
    while data:
      if self._wsel.select(self._remaining()):
        try:
          data = data[os.write(fd, data):]
        except BrokenPipeError as e:
          raise SandboxExited("the program exited while being sent a request") from e
        except BlockingIOError:
          pass

  def _read(self) -> dict:
    cap = self.config.max_output_bytes
    while b"\n" not in self._out_buf:
      if len(self._out_buf) > cap:
        raise SandboxOutputLimit(f"a reply exceeded {cap} bytes")
      for key, _ in self._sel.select(self._remaining()):
        chunk = os.read(key.fd, 1 << 16)
        if key.fileobj is self.proc.stdout:
          if not chunk:
            raise SandboxExited("the program exited before the tests finished")
          self._out_buf += chunk
        elif not chunk:
          self._sel.unregister(key.fileobj)
        else:
          self._err_total += len(chunk)
          self._err_tail = (self._err_tail + chunk)[-2048:]
          if self._err_total > cap:
            raise SandboxOutputLimit(f"stderr exceeded {cap} bytes")
    line, _, self._out_buf = self._out_buf.partition(b"\n")
    try:
      reply = json.loads(line)
    except (ValueError, RecursionError) as e:
      raise SandboxExited("the program garbled the harness channel") from e
    if not isinstance(reply, dict):
      raise SandboxExited("the program garbled the harness channel")
    return reply

  def close(self):
    """Kills everything the run started and waits until it is gone."""
    proc = self.proc
    if proc is not None:
      if proc.poll() is None:
        # While bwrap lives, its child (pid 1 of the container) cannot be a reused pid.
        child = self._child_pid() if self._info_r is not None else None
        if child:
          _kill(child, signal.SIGKILL)  # the kernel then kills the whole pid namespace
          try:
            proc.wait(timeout=1.0)  # bwrap exits once the namespace is empty
          except subprocess.TimeoutExpired:
            pass
      _kill(-proc.pid, signal.SIGKILL)  # bwrap itself, or the whole session when unsafe
      proc.wait()
      for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
          stream.close()
        except OSError:
          pass
      self._sel.close()
      self._wsel.close()
      self.proc = None
    if self._info_r is not None:
      os.close(self._info_r)
      self._info_r = None
    if self._workdir:
      shutil.rmtree(self._workdir, ignore_errors=True)
      self._workdir = None

  def _child_pid(self) -> int | None:
    os.set_blocking(self._info_r, False)
    try:
      data = os.read(self._info_r, 4096)
    except BlockingIOError:
      return None
    try:
      return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
      return None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _kill(pid: int, sig: int):
  try:
    os.kill(pid, sig)
  except (ProcessLookupError, PermissionError):
    pass
