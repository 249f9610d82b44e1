"""What a run concludes, read back from its workdir: the report's rows, which split picks the
best iteration, the paired comparison of the best iteration with the base and the SFT
baseline on the test split, and the top-level `metrics.json`.

Everything here reads stage files (`STAGE/metrics.json`, `STAGE/eval_heldout*/shard-*`), so a
resumed run and a finished one conclude the same."""

from __future__ import annotations

from typing import Sequence

from etils import epath

from rest_jax.loop import evaluation
from rest_jax.loop import report
from rest_jax.runtime import workdir as workdir_lib


def selection_split(metrics: dict) -> str:
  """The split that selects iterations: validation, else the train split; never the test."""
  return "val" if "val" in metrics else "train"


def score(metrics: dict) -> float:
  """The figure the best iteration and early stopping go by (pass@1 of `selection_split`)."""
  m = metrics.get(selection_split(metrics), {})
  return m.get("pass@1", m.get("greedy_pass@1", 0.0))


def stage_name(i: int) -> str:
  return f"iter_{i:03d}"


def report_rows(root: epath.Path, num_iterations: int, best_iteration: int | None) -> list[dict]:
  """One row per evaluated stage (base, SFT baseline, iterations), in report order."""
  rows = []
  for stage in ["iter_000", "sft_human"] + [stage_name(i) for i in range(1, num_iterations + 1)]:
    path = root / stage / "metrics.json"
    if path.exists():
      m = workdir_lib.read_json(path)
      rows.append({"stage": "base" if stage == "iter_000" else stage, "metrics": m,
                   "counts": m.get("counts"), "times": m.get("times"),
                   "best": best_iteration is not None and stage == stage_name(best_iteration)})
  return rows


def stage_test_metrics(root: epath.Path, stage: str, ids: Sequence[str]):
  """STAGE's held-out (test) samples as `evaluation.per_prompt_metrics` takes them, read back
  from its shard files (None if not evaluated)."""
  d = root / stage
  if not (d / "metrics.json").exists():
    return None
  per_prompt: dict[str, list[dict]] = {pid: [] for pid in ids}
  for path in sorted((d / "eval_heldout").glob("shard-*.jsonl")):
    for r in workdir_lib.read_jsonl(path):
      if r["prompt_id"] in per_prompt:
        per_prompt[r["prompt_id"]].append(r)
  for rows in per_prompt.values():
    rows.sort(key=lambda r: r.get("sample_idx", 0))
  greedy = {r["prompt_id"]: r["reward"] >= 1.0
            for path in sorted((d / "eval_heldout_greedy").glob("shard-*.jsonl"))
            for r in workdir_lib.read_jsonl(path)}
  return evaluation.per_prompt_metrics(per_prompt, ks=(1,), greedy=greedy)


def comparison(root: epath.Path, best_iteration: int | None, test_ids: Sequence[str],
               method: str) -> dict | None:
  """The best iteration (by validation) against the base and the SFT baseline on the test
  split: differences of pass@1 with paired bootstrap 95% intervals (same prompts, same
  draws), and a one-line verdict. None before any iteration is evaluated."""
  if best_iteration is None:
    return None
  best = stage_name(best_iteration)
  mine = stage_test_metrics(root, best, test_ids)
  if mine is None or "pass@1" not in mine:
    return None
  best_metrics = workdir_lib.read_json(root / best / "metrics.json")
  out = {"best_iteration": best_iteration,
         "selected_by": f"{selection_split(best_metrics)} pass@1",
         "test_prompts": len(test_ids)}
  for name, stage in (("base", "iter_000"), ("sft_human", "sft_human")):
    theirs = stage_test_metrics(root, stage, test_ids)
    if theirs is not None and "pass@1" in theirs:
      out[f"vs_{name}"] = evaluation.paired_differences(
          {"pass@1": mine["pass@1"]}, {"pass@1": theirs["pass@1"]})["pass@1"]
  diffs = [out[k] for k in out if k.startswith("vs_")]
  out["gain"] = bool(diffs) and all(d["ci95"][0] > 0 for d in diffs)
  out["verdict"] = report.verdict_line(out, method=method)
  return out


def write_summary(root: epath.Path, rows: Sequence[dict], cmp: dict | None,
                  best_iteration: int | None, finished: bool) -> None:
  """WORKDIR/metrics.json: the best iteration, each stage's pass@1 and the comparison."""
  summary = {"best_iteration": best_iteration,
             "selected_by": cmp["selected_by"] if cmp else None,
             "finished": finished,
             "stages": {r["stage"]: {f"{split}_pass@1": (r["metrics"].get(split) or {})
                                     .get("pass@1") for split in ("heldout", "val", "train")
                                     if split in r["metrics"]} for r in rows},
             "comparison": cmp}
  workdir_lib.write_json(root / "metrics.json", summary)
