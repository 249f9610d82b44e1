"""Test setup: 8 simulated CPU devices, set before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never reach a hub: make any accidental download attempt fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_empty"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import socket  # noqa: E402

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No network, and no tfds data dir of the machine the test runs on (task tests use it
  through `pytestmark = pytest.mark.usefixtures("offline")`)."""

  def refuse(*args, **kwargs):
    raise AssertionError("a test tried to open a network connection")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty_tfds"))


@pytest.fixture(autouse=True)
def _clear_gin():
  """Gin bindings are global: a test that parses a config must not leak it into the next."""
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS emulator for the session, and this process pointed at it (as a user's would be:
  `STORAGE_EMULATOR_HOST` alone, then `storage.configure`). Subprocesses inherit it."""
  from gcs_server import FakeGCS

  from rest_jax.runtime import storage
  server = FakeGCS(tmp_path_factory.mktemp("gcs")).start()
  os.environ.update(server.env())
  storage.configure()
  yield server
  server.stop()
