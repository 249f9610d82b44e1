"""VerifierPool (order, back-pressure, recycling, light workers) and run_verify (the
`rest-jax verify` body)."""

import io
import json

import psutil

from rest_jax.verifiers import SandboxConfig, VerifierPool, run_verify


def _math_items(n):
  return [{"completion": f"so #### {i}", "answer": str(i if i % 3 else i + 1)} for i in range(n)]


def test_order_backpressure_and_stats():
  pulled = [0]

  def source():
    for item in _math_items(2000):
      pulled[0] += 1
      yield item

  with VerifierPool(2, max_pending=16, prefetch=2) as pool:
    for i, verdict in enumerate(pool.map(source())):
      assert verdict.passed is (i % 3 != 0), (i, verdict)
      assert pulled[0] <= i + 1 + 16  # never more than max_pending ahead of the consumer
    assert pool.stats.last_items == 2000 and pool.stats.items_per_s > 0
    assert pool.stats.counts["pass"] + pool.stats.counts["fail"] == 2000


def test_workers_are_recycled_and_a_broken_off_map_leaves_no_confusion():
  with VerifierPool(2, max_items_per_worker=40) as pool:
    verdicts = pool.verify(_math_items(200))
    assert [v.passed for v in verdicts] == [i % 3 != 0 for i in range(200)]
    assert pool.stats.restarts >= 4
    for _ in zip(range(5), pool.map(_math_items(100))):
      pass  # abandoned with items in flight
    again = pool.verify(_math_items(30))
    assert [v.passed for v in again] == [i % 3 != 0 for i in range(30)]


def test_workers_do_not_load_jax():
  with VerifierPool(1) as pool:
    pool.verify(_math_items(2))
    maps = psutil.Process(pool._workers[0].proc.pid).memory_maps()
  assert not any("jax" in m.path for m in maps)


def test_malformed_items_are_errors():
  with VerifierPool(1) as pool:
    verdicts = pool.verify([{"answer": "1"}, {"completion": "1"}, "text", {"completion": "#### 1", "answer": "1"}])
  assert [v.verdict for v in verdicts] == ["error", "error", "error", "pass"]
  assert "needs" in verdicts[1].reason


def test_run_verify(tmp_path):
  lines = [
      {"id": "m1", "completion": "The answer is 18.", "answer": "18"},
      {"id": "m2", "completion": "#### 17", "answer": "#### 18"},
      {"id": "io", "completion": "```python\nprint(sum(map(int, input().split())))\n```",
       "tests": {"inputs": ["1 2"], "outputs": ["3"]}},
      {"id": "fn", "completion": "    return a * b\n", "prompt": "def mul(a, b):\n",
       "tests": {"test": "def check(candidate):\n    assert candidate(2, 3) == 6\n", "entry_point": "mul"}},
      {"id": "spin", "completion": "while True: pass", "tests": {"inputs": ["1"], "outputs": ["1"]}},
      {"id": "t1", "completion": "\\boxed{\\frac{1}{2}}", "prompt_id": "half"},
      {"id": "t2", "completion": "\\boxed{1}", "prompt_id": "missing"},
      {"completion": "#### 4"},
  ]
  path = tmp_path / "in.jsonl"
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n\n[1, 2]\n")
  references = {"half": {"answer": "0.5"}}
  out = io.StringIO()
  summary = run_verify(str(path), out, task_lookup=references.__getitem__, workers=2,
                       sandbox=SandboxConfig(deadline_s=1.0))
  rows = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r["id"] for r in rows] == ["m1", "m2", "io", "fn", "spin", "t1", "t2", 8, 9, 11]
  assert [r["verdict"] for r in rows] == ["pass", "fail", "pass", "pass", "timeout", "pass",
                                          "error", "error", "error", "error"]
  assert set(rows[0]) == {"id", "verdict", "extracted", "reason"}
  assert rows[0]["extracted"] == "18" and rows[1]["extracted"] == "17"
  assert "prompt_id 'missing' is not in the task" in rows[6]["reason"]
  assert "in.jsonl:8" in rows[7]["reason"] and '"answer", "tests" or "prompt_id"' in rows[7]["reason"]
  assert "in.jsonl:9: not JSON" in rows[8]["reason"]
  assert "expected a JSON object" in rows[9]["reason"]
  assert (summary["items"], summary["pass"], summary["timeout"], summary["error"]) == (10, 4, 1, 4)
  no_task = io.StringIO()
  run_verify(str(path), no_task, workers=1, sandbox=SandboxConfig(deadline_s=0.5))
  assert "no task was given" in json.loads(no_task.getvalue().splitlines()[5])["reason"]


def test_a_gin_bound_sandbox_deadline_reaches_the_pool_and_its_workers():
  # A run sets `SandboxConfig.deadline_s` in gin; the pool the loop builds with no arguments
  # takes it, and the workers get it with the options line (no gin there).
  import gin
  from rest_jax.verifiers.worker import CheckOptions
  gin.parse_config("rest_jax.verifiers.SandboxConfig.deadline_s = 2.5")
  try:
    pool = VerifierPool(1)
    assert pool.options.sandbox.deadline_s == 2.5
    assert pool.hard_deadline_s({"tests": {}}) == 2.5 + pool.grace_s + 0.5
    sent = CheckOptions.from_json(json.loads(pool._options_line))
    assert sent.sandbox.deadline_s == 2.5
  finally:
    gin.clear_config()
  assert VerifierPool(1).options.sandbox.deadline_s == 10.0
