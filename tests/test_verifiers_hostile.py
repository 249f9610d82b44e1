"""Hostile programs, each run through the real bubblewrap sandbox.

Every case must be contained: the verdict is not 'pass', the call returns within the
deadline + 1 s, no process of the run is left, nothing outside the sandbox changed, the
parent's secret file and environment stay unread, and a listener on 127.0.0.1 in this test
process never sees a connection.
"""

import os
import secrets
import shutil
import socket
import subprocess
import textwrap
import time

import psutil
import pytest

from rest_jax.verifiers import SandboxConfig, SandboxUnavailable, VerifierPool, verify_code

DEADLINE_S = 2.0
CONFIG = SandboxConfig(deadline_s=DEADLINE_S)
TOKEN = "rjx" + secrets.token_hex(12)  # the secret, and the marker of this run's processes


class World:
  """What a hostile program aims at, and the checks that it was left alone."""

  def __init__(self, tmp_path):
    self.dir = tmp_path
    self.victim = tmp_path / "victim.txt"
    self.victim.write_text("original")
    self.secret = tmp_path / "secret.txt"
    self.secret.write_text(TOKEN)
    self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self.listener.bind(("127.0.0.1", 0))
    self.listener.listen(8)
    self.listener.setblocking(False)
    self.port = self.listener.getsockname()[1]
    self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self.abstract.bind("\0" + TOKEN)
    self.abstract.listen(8)
    self.abstract.setblocking(False)
    self.sentinel = subprocess.Popen(["sleep", "120"])
    self.files_before = sorted(os.listdir(tmp_path))
    self.disk_free_before = shutil.disk_usage("/").free

  def values(self) -> dict:
    return dict(victim=str(self.victim), secret=str(self.secret), port=self.port, token=TOKEN,
                sentinel=self.sentinel.pid, me=os.getpid(), dir=str(self.dir))

  def check_untouched(self):
    for listener in (self.listener, self.abstract):
      with pytest.raises(BlockingIOError):
        listener.accept()
    assert self.victim.read_text() == "original"
    assert sorted(os.listdir(self.dir)) == self.files_before
    assert self.sentinel.poll() is None, "a process outside the sandbox was killed"
    assert shutil.disk_usage("/").free > self.disk_free_before - (64 << 20)
    for path in ("/tmp", "/usr", "/work", "/root"):
      assert not any(TOKEN in name for name in os.listdir(path)), path

  def close(self):
    self.sentinel.kill()
    self.sentinel.wait()
    self.listener.close()
    self.abstract.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
  monkeypatch.setenv("REST_JAX_TEST_SECRET", TOKEN)
  w = World(tmp_path)
  yield w
  w.close()


def leftovers(uid: int) -> list:
  """Processes of a sandbox uid, or carrying this run's marker, still alive."""
  found = []
  for proc in psutil.process_iter(["pid", "uids", "cmdline", "status"]):
    info = proc.info
    if info["status"] == psutil.STATUS_ZOMBIE:
      continue
    if (info["uids"] and info["uids"].real == uid) or TOKEN in " ".join(info["cmdline"] or []):
      found.append(info)
  return found


def run_contained(world: World, program: str, tests: dict, expect=("fail", "timeout"),
                  config: SandboxConfig = CONFIG):
  program = textwrap.dedent(program) % world.values()
  start = time.monotonic()
  verdict = verify_code(program, tests, config=config)
  elapsed = time.monotonic() - start
  assert verdict.verdict in expect, verdict
  assert elapsed < DEADLINE_S + 1.0, elapsed
  assert not leftovers(CONFIG.uid_base + os.getpid() % 4000), "processes left behind"
  assert TOKEN not in verdict.reason
  world.check_untouched()
  return verdict


def fn_test(assertion: str) -> dict:
  return {"test": f"def check(candidate):\n    {assertion}\n", "entry_point": "f"}


def test_fork_bomb(world):
  run_contained(world, """
      import os
      def f():
          while True:
              try:
                  os.fork()
              except OSError:
                  pass
      """, fn_test("assert candidate() == 1"), expect=("timeout",))


def test_memory_bomb(world):
  # A smaller limit than the default 1 GiB only so that filling it is quick on a busy machine.
  small = SandboxConfig(deadline_s=DEADLINE_S, memory_mb=256)
  verdict = run_contained(world, """
      def f():
          hoard = []
          while True:
              hoard.append(bytearray(16 << 20))
      """, fn_test("assert candidate() == 1"), config=small)
  assert "MemoryError" in verdict.reason
  run_contained(world, "x = bytearray(1 << 40)\ndef f():\n    return 1\n", fn_test("assert candidate() == 1"))


def test_infinite_loop_ignoring_sigterm(world):
  verdict = run_contained(world, """
      import signal
      for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
          signal.signal(s, signal.SIG_IGN)
      def f():
          while True:
              pass
      """, fn_test("assert candidate() == 1"), expect=("timeout",))
  assert "deadline 2s" in verdict.reason


def test_disk_filling(world):
  run_contained(world, """
      import os
      def f():
          written = 0
          for target in ("/tmp", "/dev/shm", "/", "/usr", %(dir)r):
              for i in range(1000):
                  try:
                      with open(os.path.join(target, "fill%%d" %% i), "wb") as out:
                          for _ in range(8):
                              out.write(b"x" * (1 << 20))
                              written += 1 << 20
                  except OSError:
                      break
          return written
      """, fn_test("assert candidate() > 1 << 30"))
  verdict = run_contained(world, """
      def f():
          with open("/tmp/big", "wb") as out:
              out.write(b"x" * (32 << 20))
          return 1
      """, fn_test("assert candidate() == 1"))
  assert "File too large" in verdict.reason  # RLIMIT_FSIZE (Python ignores SIGXFSZ)


def test_huge_output(world):
  stdio = {"inputs": ["1"], "outputs": ["1"]}
  verdict = run_contained(world, "while True:\n    print('y' * 4096)\n", stdio)
  assert "exceeded" in verdict.reason
  verdict = run_contained(world, """
      import sys
      def f():
          while True:
              sys.stderr.write('e' * 65536)
      """, fn_test("assert candidate() == 1"))
  assert "stderr exceeded" in verdict.reason
  run_contained(world, """
      def f():
          return 'z' * (8 << 20)
      """, fn_test("assert len(candidate()) == 8 << 20"))


def test_writing_and_deleting_files_outside(world):
  run_contained(world, """
      import os, shutil
      def f():
          done = 0
          for path in (%(victim)r, "/work/%(token)s", "/root/%(token)s", "/usr/%(token)s",
                       "/etc/%(token)s", "/tmp/../usr/%(token)s"):
              try:
                  with open(path, "w") as out:
                      out.write("pwned")
                  done += path != "/tmp/../usr/%(token)s"
              except OSError:
                  pass
          for path in (%(victim)r, %(secret)r):
              try:
                  os.remove(path)
                  done += 1
              except OSError:
                  pass
          try:
              shutil.rmtree(%(dir)r)
              done += 1
          except OSError:
              pass
          return done
      """, fn_test("assert candidate() > 0"))


def test_reading_a_secret_file_and_the_parents_environment(world):
  run_contained(world, """
      import os
      def f():
          found = []
          try:
              found.append(open(%(secret)r).read())
          except OSError:
              pass
          found += [v for v in os.environ.values()]
          for pid in os.listdir("/proc"):
              for name in ("environ", "cmdline"):
                  try:
                      found.append(open("/proc/%%s/%%s" %% (pid, name), "rb").read().decode("latin-1"))
                  except (OSError, ValueError):
                      pass
          for home in ("/root", "/home", "/etc", "/work"):
              found.append(str(os.path.exists(home)))
          return "%(token)s" if any("%(token)s" in s for s in found) else "|".join(found)[-200:]
      """, fn_test("assert candidate() == %r" % TOKEN))


def test_network_to_a_listener_on_localhost(world):
  run_contained(world, """
      import socket
      def f():
          for family, address in ((socket.AF_INET, ("127.0.0.1", %(port)d)),
                                  (socket.AF_UNIX, "\\0%(token)s")):
              s = socket.socket(family, socket.SOCK_STREAM)
              s.settimeout(0.5)
              try:
                  s.connect(address)
                  s.sendall(b"hello")
                  return "connected"
              except OSError:
                  pass
          return "isolated"
      """, fn_test("assert candidate() == 'connected'"))


def test_killing_the_parent_and_everyone(world):
  run_contained(world, """
      import os, signal
      def f():
          for pid in (os.getppid(), %(sentinel)d, %(me)d, 1, -1):
              try:
                  os.kill(pid, signal.SIGKILL)
              except OSError:
                  pass
          return 0
      """, fn_test("assert candidate() == 1"))
  # Its own harness server is the only thing it can kill.
  verdict = run_contained(world, "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
                          fn_test("assert candidate() == 1"))
  assert "exited before the tests finished" in verdict.reason


def test_a_daemon_does_not_outlive_the_program(world):
  run_contained(world, """
      import os
      if os.fork() == 0:
          os.setsid()
          if os.fork() == 0:
              os.execv("/bin/sh", ["sh", "-c", "sleep 30; : %(token)s"])
          os._exit(0)
      def f():
          return 0
      """, fn_test("assert candidate() == 1"))


def test_early_exit_zero_and_fake_success(world):
  run_contained(world, "import os\nprint('ALL TESTS PASSED')\nos._exit(0)\n",
                fn_test("assert candidate() == 1"))
  run_contained(world, """
      import sys
      def f():
          print("OK: all 10 tests passed")
          sys.stdout.flush()
          raise SystemExit(0)
      """, fn_test("assert candidate() == 1"))
  run_contained(world, "print('3')\nimport os\nos._exit(0)\n", {"inputs": ["1 2"], "outputs": ["4"]})


def test_the_pool_survives_hostile_items_and_keeps_order(world):
  honest = {"completion": "def f():\n    return 1\n", "tests": fn_test("assert candidate() == 1")}
  bomb = {"completion": "import os\ndef f():\n    while True:\n        try: os.fork()\n"
                        "        except OSError: pass\n", "tests": fn_test("assert candidate() == 1")}
  spin = {"completion": "def f():\n    while True: pass\n", "tests": fn_test("assert candidate() == 1")}
  math = {"completion": "#### 3", "answer": "3"}
  with VerifierPool(2, sandbox=CONFIG) as pool:
    start = time.monotonic()
    verdicts = pool.verify([honest, bomb, math, spin, honest, math])
    elapsed = time.monotonic() - start
    uids = [CONFIG.uid_base + w.proc.pid % 4000 for w in pool._workers]
  assert [v.verdict for v in verdicts] == ["pass", "timeout", "pass", "timeout", "pass", "pass"]
  assert elapsed < 2 * (DEADLINE_S + 1.0) + 5.0  # two slow items in parallel, plus start-up
  assert not any(leftovers(uid) for uid in uids)
  world.check_untouched()


def test_missing_bubblewrap_is_a_clear_error():
  missing = SandboxConfig(bwrap="no-such-bwrap-binary")
  item = {"completion": "def f():\n    return 1\n", "tests": fn_test("assert candidate() == 1")}
  with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as error:
    verify_code(item["completion"], item["tests"], config=missing)
  assert "unsafe_run_without_sandbox" in str(error.value)
  with VerifierPool(1, sandbox=missing) as pool:  # the pool raises too, not 'error' per item
    with pytest.raises(SandboxUnavailable, match="no-such-bwrap-binary"):
      pool.verify([{"completion": "#### 1", "answer": "1"}, item])


def test_unsafe_mode_runs_only_when_named(caplog):
  config = SandboxConfig(deadline_s=DEADLINE_S, bwrap="no-such-bwrap-binary",
                         unsafe_run_without_sandbox=True)
  verdict = verify_code("def f():\n    return 1\n", fn_test("assert candidate() == 1"), config=config)
  assert verdict.verdict == "pass"
  assert "WITHOUT a sandbox" in caplog.text


def test_limits_seen_from_inside():
  # Not hostile: the program reports what it may do, and the tests check the limits held.
  program = textwrap.dedent("""
      import os, resource, socket, time
      def f():
          children = 0
          for _ in range(50):
              try:
                  pid = os.fork()
              except OSError:
                  break
              if pid == 0:
                  time.sleep(5)
                  os._exit(0)
              children += 1
          interfaces = [name for _, name in socket.if_nameindex()]
          return (children, resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,
                  resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20, os.getuid() != 0,
                  sorted(os.listdir("/")), interfaces, sorted(os.environ))
      """)
  tests = fn_test("children, mem, fsize, unprivileged, root, nics, env = candidate()\n"
                  "    assert 1 <= children < 8 + 6 and mem == 1024 and fsize == 16\n"
                  "    assert unprivileged\n"
                  "    assert {'dev', 'proc', 'tmp', 'usr'} <= set(root) <= {'bin', 'dev', 'lib', "
                  "'lib32', 'lib64', 'libx32', 'proc', 'sbin', 'tmp', 'usr'}\n"
                  "    assert nics == ['lo'] and env == ['HOME', 'LANG', 'PATH', 'PWD']")
  verdict = verify_code(program, tests, config=CONFIG)
  assert verdict.verdict == "pass", verdict
  assert not leftovers(CONFIG.uid_base + os.getpid() % 4000)
