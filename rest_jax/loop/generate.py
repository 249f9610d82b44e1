"""Generate + Verify over a list of problems, in shards written atomically.

A shard is a fixed slice of the problems. Its file is written (atomically) only once every
completion in it is sampled and verified, so a killed run redoes at most the shards it was in
the middle of; with several processes each runs its own shards. Sampling draws sample j of problem p
from (seed, key(p), j), so a redone shard yields the same completions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from rest_jax.runtime import distributed as dist
from rest_jax.runtime import preemption
from rest_jax.runtime import workdir as workdir_lib
from rest_jax.tasks import sft as sft_lib

log = logging.getLogger(__name__)


def problem_key(problem_id: str) -> int:
  """A stable 31-bit integer per problem id: the `p` folded into the sampling seed."""
  return int(hashlib.sha256(problem_id.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def verifier_item(problem, completion: str) -> dict:
  """The verifier pool's item for one completion of `problem`."""
  if problem.verifier == "math":
    item = {"completion": completion, "answer": problem.reference}
    if problem.meta.get("check_work"):
      item["check_work"] = True
    return item
  item = {"completion": completion, "tests": problem.reference}
  if problem.meta.get("completion_mode") == "continuation" and problem.meta.get("code_prompt"):
    item["prompt"] = problem.meta["code_prompt"]
  return item


def sample_and_verify(problems: Sequence, *, sampler, params, tokenizer, pool, num_samples: int,
                      sampling, seed: int, sample_offsets: Mapping[str, int] | None = None,
                      verify: bool = True) -> tuple[list[dict], dict]:
  """Rows (one per completion, with its verdict) and timing stats for `problems`; with
  `verify=False` (a process helping to sample what another verifies) no rows.

  `sample_offsets[problem id]` (default 0) is the index of that problem's first sample: it gets
  samples offset .. offset + num_samples - 1, and its rows' `sample_idx` are those indices.
  """
  prompts = [sft_lib.encode_prompt(tokenizer, p.prompt) for p in problems]
  offsets = None if sample_offsets is None else [sample_offsets.get(p.id, 0) for p in problems]
  t0 = time.time()
  groups = sampler.generate(params, prompts, num_samples=num_samples, sampling=sampling,
                            seed=seed, prompt_keys=[problem_key(p.id) for p in problems],
                            sample_offsets=offsets)
  t_sample = time.time() - t0
  flat = [(p, c) for p, group in zip(problems, groups) for c in group]
  new_tokens = sum(len(c.tokens) for _, c in flat)
  if not verify:
    return [], {"sample_s": t_sample, "verify_s": 0.0, "new_tokens": new_tokens,
                "completions": 0}
  t0 = time.time()
  verdicts = pool.verify([verifier_item(p, c.text) for p, c in flat])
  t_verify = time.time() - t0
  rows = []
  for (p, c), v in zip(flat, verdicts):
    rows.append({"prompt_id": p.id, "sample_idx": c.sample_index, "prompt": p.prompt,
                 "completion": c.text, "tokens": list(c.tokens), "finish_reason": c.finish_reason,
                 "logprob_sum": float(c.logprob_sum), "reward": v.reward, "verdict": v.verdict,
                 "extracted": v.extracted, "reason": v.reason})
  return rows, {"sample_s": t_sample, "verify_s": t_verify, "new_tokens": new_tokens,
                "completions": len(flat)}


def run_shards(problems: Sequence, out_dir, *, prompts_per_shard: int, desc: str,
               record: Callable[[list[int]], None] | None = None, **kwargs) -> tuple[list[dict], dict]:
  """Runs every shard not yet done, then returns all rows (read back from the shard files).

  With several processes, process i runs shards i, i + n, i + 2n, ... and writes their files;
  after a barrier every process reads all of them. When the sampler's mesh spans the
  processes (`global` placement) they instead sample every shard together, and process 0
  verifies and writes it. A shard is done when its file exists (it is written atomically, so a
  file is always whole). After each round of shards every process checks for a preemption
  request together, then `record(finished shard indices)` runs (the loop notes them in
  `state.json`). `kwargs` go to `sample_and_verify` (`sample_offsets`: problem id -> index of
  its first sample, default 0).
  """
  count = max(1, -(-len(problems) // prompts_per_shard))
  lockstep = getattr(getattr(kwargs.get("sampler"), "mesh", None), "is_multi_process", False)
  nproc, me = (1, 0) if lockstep else (dist.process_count(), dist.process_index())
  wd = workdir_lib.Workdir(out_dir)
  totals = {"sample_s": 0.0, "verify_s": 0.0, "new_tokens": 0, "completions": 0}
  bar = tqdm(total=len(problems), desc=desc, unit="prompt", leave=False,
             disable=not dist.is_writer())
  for first in range(0, count, nproc):
    s = first + me
    if s < count:
      shard = problems[s * prompts_per_shard:(s + 1) * prompts_per_shard]
      path = wd.shard_path(wd.root, s, count)
      # Together: every process must take part in sampling a shard any of them lacks.
      todo = dist.any_process(not path.exists()) if lockstep else not path.exists()
      if todo:
        writes = not lockstep or dist.is_writer()
        rows, stats = sample_and_verify(shard, verify=writes, **kwargs)
        if writes:
          workdir_lib.write_jsonl(path, rows)
        for k in totals:
          totals[k] += stats[k]
        passed = sum(r["reward"] >= 1.0 for r in rows)
        bar.set_postfix(tok_s=f"{totals['new_tokens'] / max(totals['sample_s'], 1e-9):.0f}",
                        pass_rate=f"{passed / max(len(rows), 1):.2f}")
    # Every process's shards of this round, as far as process 0 can count them.
    bar.update(sum(len(problems[t * prompts_per_shard:(t + 1) * prompts_per_shard])
                   for t in range(first, min(first + nproc, count))))
    end = min(first + nproc, count)
    preemption.check(f"{desc}, after shards {first}-{end - 1} of {count}")
    if record is not None:  # past the collective check: every shard of the round is written
      record(list(range(end)))
  bar.close()
  dist.barrier(f"{desc}/shards")
  rows = []
  for s in range(count):
    rows.extend(workdir_lib.read_jsonl(wd.shard_path(wd.root, s, count)))
  # Rates from the shards this process ran; counts from every shard (same after a resume).
  stats = {"sample_s": totals["sample_s"], "verify_s": totals["verify_s"],
           "tokens_per_s": totals["new_tokens"] / max(totals["sample_s"], 1e-9),
           "verdicts_per_s": totals["completions"] / max(totals["verify_s"], 1e-9),
           "completions": len(rows), "new_tokens": sum(len(r["tokens"]) for r in rows)}
  return rows, stats
