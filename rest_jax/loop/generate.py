"""Generate + Verify over a list of problems, in shards written atomically.

A shard is a fixed slice of the problems. Its file is written (atomically) only once every
completion in it is sampled and verified, so a killed run redoes at most the shards it was in
the middle of; with several processes each runs its own shards. Sampling draws sample j of problem p
from (seed, key(p), j), so a redone shard yields the same completions. Every process verifies
on its own CPUs; with `overlap` (`LoopConfig.verify_overlap`), a shard's completions are
verified while the next shard samples.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import time
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from rest_jax.runtime import distributed as dist
from rest_jax.runtime import preemption
from rest_jax.runtime import workdir as workdir_lib
from rest_jax.tasks import sft as sft_lib
from rest_jax.verifiers.verdict import Verdict

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


def sample(problems: Sequence, *, sampler, params, tokenizer, num_samples: int, sampling,
           seed: int, sample_offsets: Mapping[str, int] | None = None) -> tuple[list, dict]:
  """[(problem, completion)] for `problems`, and the sampling stats.

  `sample_offsets[problem id]` (default 0) is the index of that problem's first sample: it gets
  samples offset .. offset + num_samples - 1, and its rows' `sample_idx` are those indices.
  """
  prompts = [sft_lib.encode_prompt(tokenizer, p.prompt) for p in problems]
  offsets = None if sample_offsets is None else [sample_offsets.get(p.id, 0) for p in problems]
  t0 = time.time()
  groups = sampler.generate(params, prompts, num_samples=num_samples, sampling=sampling,
                            seed=seed, prompt_keys=[problem_key(p.id) for p in problems],
                            sample_offsets=offsets)
  flat = [(p, c) for p, group in zip(problems, groups) for c in group]
  return flat, {"sample_s": time.time() - t0, "new_tokens": sum(len(c.tokens) for _, c in flat)}


def rows_of(flat: Sequence, verdicts: Sequence[Verdict]) -> list[dict]:
  """One shard row per (problem, completion) and its verdict."""
  return [{"prompt_id": p.id, "sample_idx": c.sample_index, "prompt": p.prompt,
           "completion": c.text, "tokens": list(c.tokens), "finish_reason": c.finish_reason,
           "logprob_sum": float(c.logprob_sum), "reward": v.reward, "verdict": v.verdict,
           "extracted": v.extracted, "reason": v.reason} for (p, c), v in zip(flat, verdicts)]


class _Verifying:
  """One shard's completions being verified in the background while the next shard samples.

  The pool's workers are processes: the thread here only feeds them and collects verdicts, so
  sampling (which releases the GIL while the devices run) goes on meanwhile. Each process
  verifies `share` of the completions (every `nproc`-th from `me` in `global` placement, where
  every process holds every completion; all of them otherwise).
  """

  def __init__(self, executor, pool, index: int, path, flat: list, share: slice):
    self.index, self.path, self.flat, self.share = index, path, flat, share
    items = [verifier_item(p, c.text) for p, c in flat[share]]
    self.count = len(items)
    self.seconds = 0.0

    def run():
      t0 = time.time()
      try:
        return pool.verify(items)
      finally:
        self.seconds = time.time() - t0

    if executor is None:  # in turn, in this thread
      self.future = concurrent.futures.Future()
      self.future.set_result(run())
    else:
      self.future = executor.submit(run)

  def verdicts(self, lockstep: bool) -> list[Verdict]:
    """Every completion's verdict (in `global` placement, gathered from all processes: every
    process must call this together)."""
    mine = self.future.result()
    if not lockstep or dist.process_count() == 1:
      return mine
    parts = dist.allgather_json([v.to_json() for v in mine])
    out: list[Verdict | None] = [None] * len(self.flat)
    for proc, part in enumerate(parts):
      for i, v in zip(range(proc, len(self.flat), len(parts)), part):
        out[i] = Verdict(v["verdict"], v["extracted"], v["reason"])
    return out


def run_shards(problems: Sequence, out_dir, *, prompts_per_shard: int, desc: str,
               record: Callable[[list[int]], None] | None = None, pool, overlap: bool = False,
               **kwargs) -> tuple[list[dict], dict]:
  """Runs every shard not yet done, then returns all rows (read back from the shard files).

  With several processes, process i runs shards i, i + n, i + 2n, ... and writes their files;
  after a barrier every process reads all of them. When the sampler's mesh spans the
  processes (`global` placement) they instead sample every shard together, each verifies its
  share of the completions on its own CPUs, and process 0 gathers the verdicts and writes the
  shard. With `overlap`, shard s is verified (by a thread feeding the verifier processes)
  while shard s + 1 samples; without, each shard is verified after it samples. A shard is done when
  its file exists (it is written atomically, so a file is always whole). After each round of
  shards every process checks for a preemption request together, then `record(shard indices
  written)` runs (the loop notes them in `state.json`). `kwargs` go to `sample`
  (`sample_offsets`: problem id -> index of its first sample, default 0).
  """
  count = max(1, -(-len(problems) // prompts_per_shard))
  lockstep = getattr(getattr(kwargs.get("sampler"), "mesh", None), "is_multi_process", False)
  nproc, me = (1, 0) if lockstep else (dist.process_count(), dist.process_index())
  share = slice(dist.process_index(), None, dist.process_count()) if lockstep else slice(None)
  wd = workdir_lib.Workdir(out_dir)
  totals = {"sample_s": 0.0, "verify_s": 0.0, "new_tokens": 0, "completions": 0, "verified": 0}
  bar = tqdm(total=len(problems), desc=desc, unit="prompt", leave=False,
             disable=not dist.is_writer())
  t_start = time.time()
  pending: _Verifying | None = None
  written = 0   # shards below this index are written (by whichever process owns them)

  def finish(job: _Verifying | None):
    """Waits for `job`'s verdicts and writes its shard."""
    if job is None:
      return
    rows = rows_of(job.flat, job.verdicts(lockstep))
    if not lockstep or dist.is_writer():
      workdir_lib.write_jsonl(job.path, rows)
    totals["verify_s"] += job.seconds
    totals["verified"] += job.count
    totals["completions"] += len(rows)
    passed = sum(r["reward"] >= 1.0 for r in rows)
    bar.set_postfix(tok_s=f"{totals['new_tokens'] / max(totals['sample_s'], 1e-9):.0f}",
                    pass_rate=f"{passed / max(len(rows), 1):.2f}")

  with (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="verify") if overlap
        else contextlib.nullcontext()) as executor:
    try:
      for first in range(0, count, nproc):
        s = first + me
        job = None
        if s < count:
          shard = problems[s * prompts_per_shard:(s + 1) * prompts_per_shard]
          path = wd.shard_path(wd.root, s, count)
          # Together: every process must take part in sampling a shard any of them lacks.
          todo = dist.any_process(not path.exists()) if lockstep else not path.exists()
          if todo:
            flat, stats = sample(shard, **kwargs)
            totals["sample_s"] += stats["sample_s"]
            totals["new_tokens"] += stats["new_tokens"]
            job = _Verifying(executor, pool, s, path, flat, share)
        finish(pending)   # the previous shard, verified while this one sampled
        pending = job if overlap else None
        if not overlap:
          finish(job)
        written = first if overlap else min(first + nproc, count)
        # Every process's shards of this round, as far as process 0 can count them.
        bar.update(sum(len(problems[t * prompts_per_shard:(t + 1) * prompts_per_shard])
                       for t in range(first, min(first + nproc, count))))
        preemption.check(f"{desc}, after shards {first}-{min(first + nproc, count) - 1} of "
                         f"{count}")
        if record is not None and written:  # past the collective check: those are written
          record(list(range(written)))
    except preemption.Preempted:
      finish(pending)   # the last sampled shard is kept (every process got the same signal)
      raise
    finish(pending)
  bar.close()
  dist.barrier(f"{desc}/shards")
  if record is not None and written < count:  # past the barrier: every shard is written
    record(list(range(count)))
  rows = []
  for s in range(count):
    rows.extend(workdir_lib.read_jsonl(wd.shard_path(wd.root, s, count)))
  # Rates from the shards this process ran; counts from every shard (same after a resume).
  stats = {"sample_s": totals["sample_s"], "verify_s": totals["verify_s"],
           "wall_s": time.time() - t_start, "verified": totals["verified"],
           "tokens_per_s": totals["new_tokens"] / max(totals["sample_s"], 1e-9),
           "verdicts_per_s": totals["verified"] / max(totals["verify_s"], 1e-9),
           "completions": len(rows), "new_tokens": sum(len(r["tokens"]) for r in rows)}
  return rows, stats
