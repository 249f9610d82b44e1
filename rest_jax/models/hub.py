"""`hf://ORG/NAME[@REVISION]`: a model on the Hugging Face Hub, resolved to a local directory.

`resolve(spec)` returns the snapshot directory of the repo in the Hub cache (`HF_HOME`,
`HF_HUB_CACHE`), downloading what is missing through `huggingface_hub`, with its progress
bars. Only the files a model needs are fetched: the config, the tokenizer files and the
safetensors weights (`weights=False`: no weights, for `rest-jax plan`). `HF_TOKEN` is
honoured for gated and private repos; with `HF_HUB_OFFLINE=1` nothing touches the network and
the cached snapshot is used, or the call fails at once.

Several hosts: every process resolves into its own cache (the hosts of a TPU slice share no
disk), then the processes compare the commits they resolved. A host that failed, or a branch
that moved while the hosts were downloading, stops every process with the same one-line
error instead of loading different weights or leaving the others waiting; pin a commit
(`@<sha>`) or rerun.

Every failure (an unknown repo, a missing revision, no network and no cached copy, a gated
repo without a token) is a `WeightsError` naming the spec: `rest-jax` prints one line and
exits 2.
"""

from __future__ import annotations

import logging
import re

from rest_jax.models.weights import WeightsError

log = logging.getLogger(__name__)

SCHEME = "hf://"
# What `HFDirectory` and the tokenizer loaders read; nothing else is downloaded.
CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]
WEIGHT_FILES = ["*.safetensors", "model.safetensors.index.json"]
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_hub_spec(spec) -> bool:
  return str(spec).startswith(SCHEME)


def parse(spec: str) -> tuple[str, str | None]:
  """(repo id, revision or None) of `hf://ORG/NAME[@REVISION]`."""
  body = str(spec)[len(SCHEME):]
  repo, _, revision = body.partition("@")
  if not _REPO.match(repo) or (_ and not revision):
    raise WeightsError(f"{spec!r}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION "
                       "(a branch, tag or commit)")
  return repo, revision or None


def resolve(spec: str, *, weights: bool = True) -> tuple[str, str]:
  """(local snapshot directory, commit) of `spec`; see the module docstring."""
  repo, revision = parse(spec)
  patterns = CONFIG_FILES + (WEIGHT_FILES if weights else [])
  error = None
  path = commit = ""
  try:
    path = _download(repo, revision, patterns)
    commit = _commit_of(path)
  except WeightsError as e:
    error = e
  _agree(spec, commit, error)
  log.info("%s: %s (commit %s)", spec, path, commit)
  return path, commit


def _download(repo: str, revision: str | None, patterns: list[str]) -> str:
  import huggingface_hub
  from huggingface_hub import errors
  spec = f"{SCHEME}{repo}" + (f"@{revision}" if revision else "")
  try:
    return huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns)
  except errors.GatedRepoError as e:
    raise WeightsError(f"{spec}: the repo is gated; accept its terms on the Hub and set "
                       f"HF_TOKEN ({_first_line(e)})") from e
  except errors.RepositoryNotFoundError as e:
    raise WeightsError(f"{spec}: no such model repo on the Hub, or it is private and HF_TOKEN "
                       f"does not grant access ({_first_line(e)})") from e
  except errors.RevisionNotFoundError as e:
    raise WeightsError(f"{spec}: the repo has no revision {revision!r} (a branch, tag or "
                       f"commit)") from e
  except errors.LocalEntryNotFoundError as e:
    cause = e.__cause__ or e.__context__
    why = f": {type(cause).__name__}: {_first_line(cause)}" if cause else ""
    raise WeightsError(f"{spec}: not in the Hub cache and the Hub cannot be reached{why} "
                       "(HF_HUB_OFFLINE=1 uses only the cache; without it, check the "
                       "network or HF_ENDPOINT)") from e
  except getattr(errors, "IncompleteSnapshotError", ()) as e:  # huggingface_hub >= 1.x
    raise WeightsError(f"{spec}: the cached snapshot is incomplete and the Hub cannot be "
                       f"reached: {_first_line(e)}") from e
  except (errors.HfHubHTTPError, errors.HFValidationError, OSError, ValueError) as e:
    raise WeightsError(f"{spec}: cannot fetch from the Hub: {type(e).__name__}: "
                       f"{_first_line(e)}") from e


def _first_line(e) -> str:
  return (str(e).strip().splitlines() or [""])[0]


def _commit_of(path: str) -> str:
  """The commit a snapshot directory (`.../snapshots/<sha>`) holds."""
  name = path.rstrip("/").rsplit("/", 1)[-1]
  return name if _COMMIT.match(name) else ""


def _agree(spec: str, commit: str, error: WeightsError | None) -> None:
  """Every process resolved `spec` to the same commit, or every process raises."""
  from rest_jax.runtime import distributed
  rows = distributed.allgather_json([commit, error is None])
  if error is not None:
    raise error
  failed = [i for i, (_, ok) in enumerate(rows) if not ok]
  if failed:
    raise WeightsError(f"{spec}: process(es) {failed} could not fetch it (see their logs)")
  commits = {c for c, _ in rows}
  if len(commits) > 1:
    raise WeightsError(f"{spec}: the processes resolved different commits {sorted(commits)} "
                       "(the revision moved while they downloaded); pin one with "
                       f"{SCHEME}ORG/NAME@<commit> or rerun")
