"""Where a path lives: local disk or a bucket (gs://), through one backend for both.

`etils.epath` serves every path. For gs:// it is made to use fsspec/gcsfs rather than
TensorFlow's gfile (`EPATH_USE_TF=false`, set by `configure`): gfile only talks to Google's
real endpoint, so a path only production could take would be a path no test ever took. gcsfs,
google-cloud-storage and tensorstore (orbax's array store) all reach the same bucket.

Pointing the whole program at an emulator takes the standard `STORAGE_EMULATOR_HOST` alone:
`configure` derives tensorstore's endpoint and anonymous credentials from it.

Object storage is not a POSIX disk: a rename is a copy plus a delete, an object cannot be
appended to, and directories do not exist. So a write to gs:// uploads the object once
(an upload is atomic: readers see the old object or the new one), never a temporary plus a
rename; local writes keep the temporary and `os.replace`. gcsfs retries transient errors
(429, 5xx, dropped connections) with backoff; what is left after that is a `StorageError`
naming the path, which the command line reports in one line (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Iterator

from etils import epath

REMOTE_SCHEMES = ("gs://",)


class StorageError(OSError):
  """A path that could not be read or written after retries: the message names it and why."""


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_SCHEMES)


# ----------------------------------------------------------------------------- set-up

class _QuietExpected(logging.Filter):
  """Drops gcsfs's log records for things that are expected and handled: the zonal-bucket
  probe that needs real credentials, the server-side move an emulator lacks (we never rename
  on a bucket; orbax may), and "out of retries" (re-raised, then reported by `StorageError`)."""

  EXPECTED = ("Could not determine bucket type", "Failed to move file using moveTo",
              "out of retries on exception")

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(s in str(record.msg) for s in self.EXPECTED)


def configure(environ=os.environ) -> None:
  """Makes epath use gcsfs for gs://, and with `STORAGE_EMULATOR_HOST` set, points tensorstore
  at the same endpoint with anonymous credentials. Idempotent; call before the first gs:// use
  (the command line does, before any command runs)."""
  environ["EPATH_USE_TF"] = "false"
  from etils.epath import gpath
  if hasattr(gpath, "_is_tf_installed"):   # epath caches its choice of backend
    gpath._is_tf_installed.cache_clear()   # pylint: disable=protected-access
  # Another process (a peer host, tensorstore under orbax) writes to the same prefixes: a
  # cached listing would hide their files (a peer's shard, a new checkpoint step).
  import fsspec.config
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
  host = environ.get("STORAGE_EMULATOR_HOST")
  if host:
    if "://" not in host:
      host = "http://" + host
    # Derived, so they always follow the one variable a user sets.
    environ["TENSORSTORE_GCS_HTTP_URL"] = host.rstrip("/")
    environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "anonymous"
  gcsfs_log = logging.getLogger("gcsfs")
  if not any(isinstance(f, _QuietExpected) for f in gcsfs_log.filters):
    gcsfs_log.addFilter(_QuietExpected())


_STORAGE_LIBRARIES = ("gcsfs", "aiohttp", "google", "tensorstore", "fsspec", "requests",
                      "urllib3")


def _storage_failure(e: BaseException) -> BaseException | None:
  """The exception in `e`'s chain that a storage library raised (a connection refused, an
  HTTP error after retries, tensorstore's status), else None: a bug keeps its traceback."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    module = type(e).__module__ or ""
    if module.split(".")[0] in _STORAGE_LIBRARIES or isinstance(e, (ConnectionError,
                                                                    TimeoutError)):
      return e
    if isinstance(e, OSError) and _raised_in_storage_library(e):
      return e   # gcsfs raises plain OSError("Forbidden: ...") and the like
    if "gs://" in str(e) and isinstance(e, (OSError, ValueError, RuntimeError)):
      return e   # orbax and tensorstore re-raise with the object's URL in the message
    e = e.__cause__ or e.__context__
  return None


def _raised_in_storage_library(e: BaseException) -> bool:
  tb = e.__traceback__
  while tb is not None:
    name = tb.tb_frame.f_globals.get("__name__") or ""
    if name.split(".")[0] in _STORAGE_LIBRARIES:
      return True
    tb = tb.tb_next
  return False


def describe(e: BaseException) -> str:
  """A storage failure in a few words, without the libraries' tracebacks and request dumps."""
  failure = _storage_failure(e) or e
  lines = str(failure).strip().splitlines()
  text = lines[0] if lines else ""
  if "Cannot connect to host" in text or isinstance(failure, ConnectionError):
    return f"cannot reach the storage endpoint ({text or type(failure).__name__})"
  code = getattr(failure, "code", None)
  # gcsfs raises OSError("Forbidden: URL\nthe server's message") for a 403.
  if (isinstance(failure, PermissionError) or code == 403 or text.startswith("Forbidden")
      or "403" in text[:80]):
    return f"permission denied ({lines[1] if len(lines) > 1 else text})"
  if code == 404 or isinstance(failure, FileNotFoundError):
    return f"no such bucket or object ({text})"
  return text or type(failure).__name__


@contextlib.contextmanager
def errors(path, doing: str) -> Iterator[None]:
  """Turns what a bucket raises (after gcsfs's own retries) into a `StorageError` that names
  `path` and what was being done. Local errors, a missing object (callers test for it) and
  anything not from a storage library pass unchanged."""
  try:
    yield
  except (StorageError, FileNotFoundError, FileExistsError, IsADirectoryError,
          NotADirectoryError):
    raise
  except Exception as e:
    # The project's own errors (a changed config, bad weights) already say what is wrong.
    if (not is_remote(path) or type(e).__module__.startswith("rest_jax")
        or _storage_failure(e) is None):
      raise
    raise StorageError(f"{path}: cannot {doing}: {describe(e)}") from e


def check_writable(path) -> None:
  """Fails at once, in one line, where a long job would fail later: `path` on a bucket that
  does not exist, that this machine may not write, or an endpoint that does not answer. Writes
  and deletes one small object; nothing on local disk."""
  if not is_remote(path):
    return
  probe = epath.Path(path) / f".write_probe.{os.getpid()}"
  try:
    with probe.open("wb") as f:
      f.write(b"")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, FileNotFoundError):
      bucket = str(path).split("/")[2]
      raise StorageError(f"{path}: cannot write there: the bucket gs://{bucket} does not exist "
                         f"(create it: gcloud storage buckets create gs://{bucket})") from e
    if _storage_failure(e) is None and not isinstance(e, OSError):
      raise
    raise StorageError(f"{path}: cannot write there: {describe(e)}") from e


# ----------------------------------------------------------------------------- writes

def write_bytes(path, data: bytes) -> None:
  """Writes `path` whole, atomically: a run killed at any instant leaves the old content or
  the new, never a torn file."""
  path = epath.Path(path)
  with errors(path, "write it"):
    if is_remote(path):
      # One upload is one object version; no directories to create on a bucket.
      with path.open("wb") as f:
        f.write(data)
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_text(path) -> str:
  path = epath.Path(path)
  with errors(path, "read it"):
    return path.read_text()


def upload_tree(local_dir, remote_dir, *, last: tuple[str, ...] = ()) -> None:
  """Copies every file under `local_dir` to `remote_dir`, the names in `last` after all the
  others: a reader that waits for them (config.json) finds a complete directory."""
  local_dir = str(local_dir)
  files = []
  for root, _, names in os.walk(local_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), local_dir)
      files.append(rel)
  files.sort(key=lambda rel: (rel in last, rel))
  for rel in files:
    target = epath.Path(remote_dir) / rel
    with errors(target, "write it"), open(os.path.join(local_dir, rel), "rb") as src, \
        target.open("wb") as dst:
      # Streamed (a model's weights need not fit in memory); the object appears whole when
      # the upload is finalised on close.
      while chunk := src.read(1 << 24):
        dst.write(chunk)


# ----------------------------------------------------------------------------- local copies

def _cache_root() -> str:
  return os.path.join(os.environ.get("REST_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rest_jax"), "remote")


def _version(path: epath.Path) -> str:
  """What identifies this object's content: its generation (or etag), else size and mtime."""
  fs = path._backend.fs(str(path)) if hasattr(path._backend, "fs") else None  # pylint: disable=protected-access
  if fs is not None:
    info = fs.info(str(path))
    return str(info.get("generation") or info.get("etag") or info.get("md5Hash")
               or (info.get("size"), info.get("updated")))
  st = path.stat()
  return f"{st.length}-{st.mtime}"


def local_copy(remote, *, names=None) -> str:
  """A local directory (or file) holding `remote`'s content, for readers that need a real file
  (safetensors memory-maps, GGUF seeks). Each file is fetched once per object version into
  `$REST_JAX_CACHE/remote/` and reused after. For a directory, `names(name) -> bool` picks the
  files (default: all)."""
  remote = epath.Path(remote)
  key = hashlib.sha256(str(remote).encode()).hexdigest()[:16]
  base = os.path.join(_cache_root(), key)
  with errors(remote, "read it"):
    if not remote.is_dir():
      if not remote.exists():
        raise FileNotFoundError(f"{remote}: no such object")
      return _fetch(remote, os.path.join(base, remote.name))
    for child in sorted(remote.iterdir()):
      if not child.is_dir() and (names is None or names(child.name)):
        _fetch(child, os.path.join(base, child.name))
  return base


def _fetch(remote: epath.Path, local: str) -> str:
  stamp = local + ".source.json"
  version = _version(remote)
  if os.path.exists(local) and os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      if json.load(f) == {"path": str(remote), "version": version}:
        return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = f"{local}.tmp{os.getpid()}"
  with remote.open("rb") as src, open(tmp, "wb") as dst:
    while chunk := src.read(1 << 24):
      dst.write(chunk)
  os.replace(tmp, local)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump({"path": str(remote), "version": version}, f)
  return local
