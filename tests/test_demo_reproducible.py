"""The demo, reduced, run twice from scratch: the same figures, the same selection.

RESULTS.md's demo table is only worth something if the README's command gives the same
numbers again on the same machine (same device count and CPU: float reduction order).
"""

import json

import run_helpers as rh

REDUCED = [
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=2", "--gin.LoopConfig.num_train_prompts=16",
    "--gin.LoopConfig.num_val_prompts=8", "--gin.LoopConfig.num_human_solutions=8",
    "--gin.LoopConfig.num_eval_prompts=16", "--gin.LoopConfig.num_eval_train_prompts=8",
    "--gin.LoopConfig.num_samples=4", "--gin.LoopConfig.eval_samples=2",
    "--gin.LoopConfig.eval_ks=(1, 2)", "--gin.LoopConfig.prompts_per_shard=16",
    "--gin.LoopConfig.base_sft_steps=20", "--gin.LoopConfig.max_new_tokens=32",
    "--gin.LoopConfig.sampler_slots=16", "--gin.ImproveConfig.steps=8",
    "--gin.create_mesh.shape=(1, 2, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]
STAGES = ("iter_000", "sft_human", "iter_001", "iter_002")


def test_reduced_demo_twice_gives_identical_metrics(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  rh.run(REDUCED, a)
  rh.run(REDUCED, b)
  for stage in STAGES:
    ma, mb = rh.metrics(a, stage), rh.metrics(b, stage)
    assert ma == mb, stage
    assert {"heldout", "val", "train"} <= set(ma), stage
  assert (a / "iter_001" / "kept.jsonl").read_text() == (b / "iter_001" / "kept.jsonl").read_text()
  # The run's summary: best iteration by validation, paired comparison, verdict.
  sa, sb = rh.read_json(a, "metrics.json"), rh.read_json(b, "metrics.json")
  assert sa == sb
  assert sa["selected_by"] == "val pass@1" and sa["best_iteration"] in (1, 2)
  cmp = sa["comparison"]
  assert set(cmp) >= {"vs_base", "vs_sft_human", "verdict", "gain"}
  state = json.loads((a / "state.json").read_text())
  assert state["best_iteration"] == sa["best_iteration"]
  report = (a / "report.md").read_text().splitlines()
  verdict = next(i for i, line in enumerate(report) if line.startswith("**Verdict:"))
  table = next(i for i, line in enumerate(report) if line.startswith("| stage |"))
  assert verdict < table and "paired bootstrap 95%" in report[verdict]
  assert "val pass@1" in report[table]
