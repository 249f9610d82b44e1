"""Reward model training data from JSONL: files, globs, or the workdir of a rest-jax run.

A line is a JSON object with

  prompt      the prompt text, as the model saw it
  completion  the completion text
  reward      the score to learn (a verifier's 0/1, or any number); `score` is accepted too
  prompt_id   optional: groups completions of one prompt (pairs, held-out split); default
              the prompt text itself

which is exactly what a run's sample shards hold (WORKDIR/iter_NNN/samples/shard-*.jsonl, or
samples/round_NN/shard-*.jsonl with adaptive sampling; WORKDIR/grow_NNN/samples/...). Only the
training prompts' samples are read from a workdir: its held-out evaluation samples
(eval_heldout/) must stay unseen by the reward model.
Every bad line is reported with its file and line number; nothing is skipped silently.
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

from etils import epath

from rest_jax.tasks import jsonl_parse
from rest_jax.rewards.training import RMExample



class RewardDataError(ValueError):
  """Reward training data is missing or malformed (the message names file and line)."""


def _check(obj) -> str | None:
  if not isinstance(obj, dict):
    return f"expected a JSON object, got {type(obj).__name__}"
  for k in ("prompt", "completion"):
    if k not in obj:
      return (f"missing key {k!r}; expected keys 'prompt', 'completion', 'reward' (or 'score'), "
              "optionally 'prompt_id'")
    if not isinstance(obj[k], str):
      return f"{k!r} must be a string, got {type(obj[k]).__name__}"
  key = "reward" if "reward" in obj else "score" if "score" in obj else None
  if key is None:
    return "missing key 'reward' (or 'score'): the number the reward model learns"
  v = obj[key]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
    return f"{key!r} must be a number, got {v!r}"
  pid = obj.get("prompt_id")
  if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int))):
    return f"'prompt_id' must be a string or integer, got {pid!r}"
  return None


def read_file(path) -> list[RMExample]:
  """Examples of one JSONL file; raises RewardDataError listing every bad line."""
  path = epath.Path(path)
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise RewardDataError(f"{path}: cannot read: {e}") from e
  out, errors = [], []
  for n, obj in jsonl_parse.json_objects(text.splitlines(), str(path), errors):
    problem = _check(obj)
    if problem:
      errors.append(f"{path}:{n}: {problem}")
      continue
    score = obj["reward"] if "reward" in obj else obj["score"]
    pid = obj.get("prompt_id")
    out.append(RMExample(prompt=obj["prompt"], completion=obj["completion"], score=float(score),
                         group=str(pid) if pid is not None else obj["prompt"]))
  jsonl_parse.raise_if_errors(errors, RewardDataError, "line(s)")
  return out


def workdir_shards(root) -> list[str]:
  """The training-sample shards of a run's workdir (never its evaluation samples)."""
  root = epath.Path(root)
  paths = []
  for stage in sorted(root.iterdir()):
    if stage.name.startswith(("iter_", "grow_")) and (stage / "samples").is_dir():
      for pattern in ("shard-*.jsonl", "round_*/shard-*.jsonl"):  # fixed K; adaptive rounds
        paths += sorted(str(p) for p in (stage / "samples").glob(pattern))
  return paths


def resolve_inputs(specs: Sequence[str]) -> list[str]:
  """Files named by `--input` values: files, globs, or run workdirs."""
  files: list[str] = []
  for spec in specs:
    if os.path.isdir(spec) or (spec.startswith("gs://") and epath.Path(spec).is_dir()):
      found = workdir_shards(spec)
      if not found:
        raise RewardDataError(
            f"{spec}: a directory without sample shards; expected the WORKDIR of a rest-jax run "
            "(WORKDIR/iter_NNN/samples/shard-*.jsonl) or JSONL files")
      files += found
    elif any(ch in spec for ch in "*?["):
      found = sorted(glob.glob(spec))
      if not found:
        raise RewardDataError(f"{spec}: the pattern matches no file")
      files += found
    elif epath.Path(spec).is_file():
      files.append(spec)
    else:
      raise RewardDataError(f"{spec}: no such file or directory")
  return files


def read_inputs(specs: Sequence[str]) -> tuple[list[RMExample], list[str]]:
  """(examples, files read) for `--input` values."""
  files = resolve_inputs(specs)
  examples = []
  for f in files:
    examples += read_file(f)
  if not examples:
    raise RewardDataError(f"no examples in {', '.join(files)}")
  return examples, files
