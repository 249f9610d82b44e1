"""`hf://ORG/NAME[@REVISION]`: every way it can fail is one line and exit 2, never a hang.

No test here reaches the real Hub: the cache is a temporary `HF_HOME`, "no network" is an
endpoint on a closed local port, and an unknown repo or revision comes from a local stub
that answers as the Hub does (404 with its `X-Error-Code` header). Loading a model through
`hf://` from the cache is in test_weights_parity.py.
"""

import http.server
import socket
import threading

import huggingface_hub.constants
import pytest

from rest_jax import cli
from rest_jax.models import hub
from rest_jax.models.weights import WeightsError

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture()
def hub_env(tmp_path, monkeypatch):
  """A private, empty Hub cache (huggingface_hub reads its settings once, at import)."""
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  return tmp_path


def _cache_repo(root, repo, commit=COMMIT):
  d = root / "hub" / ("models--" + repo.replace("/", "--"))
  (d / "snapshots" / commit).mkdir(parents=True)
  (d / "snapshots" / commit / "config.json").write_text("{}")
  (d / "refs").mkdir()
  (d / "refs" / "main").write_text(commit)


def _run(argv, capsys):
  rc = cli.main(argv)
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


def _one_line_exit_2(rc, out, err, *needles):
  assert rc == 2 and not out and "Traceback" not in err, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  for n in needles:
    assert n in lines[0], lines[0]


@pytest.mark.parametrize("spec", ["hf://just-a-name", "hf://a/b/c", "hf://org/name@"])
def test_a_malformed_spec_names_the_form(spec):
  with pytest.raises(WeightsError, match="expected hf://ORG/NAME"):
    hub.parse(spec)


def test_offline_a_repo_not_in_the_cache_is_one_line(hub_env, capsys):
  rc, out, err = _run(["logprobs", "--model", "hf://nobody/nothing", "--text", "x"], capsys)
  _one_line_exit_2(rc, out, err, "hf://nobody/nothing", "not in the Hub cache", "HF_HUB_OFFLINE")


def test_a_hub_preset_is_fetched_from_its_repo(hub_env, capsys):
  """`qwen3-0.6b` means Qwen's released checkpoint: with an empty cache offline, the one line
  names the repo it would fetch."""
  rc, out, err = _run(["logprobs", "--model", "qwen3-0.6b", "--text", "x"], capsys)
  _one_line_exit_2(rc, out, err, "hf://Qwen/Qwen3-0.6B", "not in the Hub cache")


def test_offline_a_revision_not_in_the_cache_is_one_line(hub_env, capsys):
  _cache_repo(hub_env, "org/model")
  spec = "hf://org/model@v2"
  rc, out, err = _run(["eval", "--model", spec, "--task", "arithmetic"], capsys)
  _one_line_exit_2(rc, out, err, spec, "not in the Hub cache")


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_no_network_is_one_line(hub_env, monkeypatch, capsys):
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
  rc, out, err = _run(["export", "--checkpoint", "hf://org/model", "--out",
                       str(hub_env / "out")], capsys)
  _one_line_exit_2(rc, out, err, "hf://org/model", "cannot be reached", "ConnectError")
  assert not (hub_env / "out").exists()


class _FakeHub(http.server.BaseHTTPRequestHandler):
  """Answers every model lookup as the Hub does for an unknown repo or revision."""

  def do_GET(self):
    known_repo = self.path.startswith("/api/models/org/model/")
    self.send_response(404)
    self.send_header("X-Error-Code", "RevisionNotFound" if known_repo else "RepoNotFound")
    self.send_header("X-Error-Message", "not found")
    self.send_header("Content-Length", "0")
    self.end_headers()

  do_HEAD = do_GET

  def log_message(self, *args):
    pass


@pytest.fixture()
def fake_hub(hub_env, monkeypatch):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT",
                      f"http://127.0.0.1:{server.server_address[1]}")
  yield
  server.shutdown()


def test_an_unknown_repo_is_one_line(fake_hub, capsys):
  rc, out, err = _run(["sample", "--model", "hf://nobody/nothing", "--prompt", "x"], capsys)
  _one_line_exit_2(rc, out, err, "hf://nobody/nothing", "no such model repo", "HF_TOKEN")


def test_a_missing_revision_is_one_line(fake_hub, capsys):
  rc, out, err = _run(["logprobs", "--model", "hf://org/model@v9", "--text", "x"], capsys)
  _one_line_exit_2(rc, out, err, "hf://org/model@v9", "no revision 'v9'")


def test_offline_resolution_returns_the_cached_commit(hub_env):
  _cache_repo(hub_env, "org/model")
  path, commit = hub.resolve("hf://org/model", weights=False)
  assert commit == COMMIT and path.endswith(f"snapshots/{COMMIT}")
  assert hub.resolve(f"hf://org/model@{COMMIT}", weights=False)[1] == COMMIT


_TWO_HOSTS = """
import sys
from rest_jax.runtime import distributed as dist
dist.initialize(dist.ProcessGroup(coordinator_address=sys.argv[1], num_processes=2,
                                  process_id=int(sys.argv[2]), init_timeout_s=60))
from rest_jax.models import hub
from rest_jax.models.weights import WeightsError
for repo in ("org/same", "org/moved", "org/half"):
  try:
    print(repo, "ok", hub.resolve("hf://" + repo, weights=False)[1], flush=True)
  except WeightsError as e:
    print(repo, "error", e, flush=True)
"""


def test_two_hosts_load_one_commit_or_all_stop(tmp_path):
  """Each host resolves into its own cache; a host that cannot, or a branch that moved
  between the hosts' downloads, stops both with the same kind of line (not a hang, not two
  different models)."""
  import os
  import subprocess
  import sys
  other = "0" * 40
  homes = [tmp_path / "host0", tmp_path / "host1"]
  for i, home in enumerate(homes):
    _cache_repo(home, "org/same")
    _cache_repo(home, "org/moved", COMMIT if i == 0 else other)
    if i == 0:
      _cache_repo(home, "org/half")
  address = f"127.0.0.1:{_closed_port()}"
  procs = []
  for i, home in enumerate(homes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HOME=str(home), HF_HUB_OFFLINE="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs.append(subprocess.Popen([sys.executable, "-c", _TWO_HOSTS, address, str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  lines = [dict(l.split(" ", 1) for l in out.splitlines()) for out, _ in outs]
  assert lines[0]["org/same"] == lines[1]["org/same"] == f"ok {COMMIT}"
  for host in lines:
    assert host["org/moved"].startswith("error hf://org/moved: the processes resolved "
                                        "different commits"), host
  assert lines[0]["org/half"] == "error hf://org/half: process(es) [1] could not fetch it (see " \
                                 "their logs)"
  assert lines[1]["org/half"].startswith("error hf://org/half: not in the Hub cache")
