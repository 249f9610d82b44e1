"""Adaptive sampling budgets: the planner on made-up rows, the rounds on the tiny sampler (the
same draws as the fixed K, resumes), and one ReST-EM iteration through the command line."""

import collections
import functools
import json
import shutil

import jax
import pytest
from etils import epath

import run_helpers as rh
from helpers import family_configs, perturb
from rest_jax.loop import adaptive_sampling as ad
from rest_jax.loop import filtering
from rest_jax.loop import generate
from rest_jax.loop.rest import ReSTLoop
from rest_jax.loop.rest_em import Loop, LoopConfig
from rest_jax.models import init_params
from rest_jax.rewards import data as reward_data
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling.sampler import Sampler, SamplingParams
from rest_jax.tasks.base import Problem
from rest_jax.tokenizers import ByteTokenizer
from rest_jax.verifiers import Verdict

# ----------------------------------------------------------------------------- the planner


def _fake_sampler(length, passes, log=None):
  """`sample(r, plan)` for `sample_in_rounds`: rows of `length(pid, j)` tokens, reward
  `passes(pid, j)`, every completion distinct; `log` collects the plans."""
  def sample(r, plan):
    if log is not None:
      log.append((r, plan))
    rows = [{"prompt_id": p, "sample_idx": j, "tokens": [7] * length(p, j),
             "completion": f"{p}-{j}", "reward": float(passes(p, j))}
            for p in plan.active for j in range(plan.offset, plan.offset + plan.samples)]
    stats = {"sample_s": 1.0, "verify_s": 1.0, "tokens_per_s": 10.0, "verdicts_per_s": 2.0,
             "completions": len(rows), "new_tokens": sum(len(r["tokens"]) for r in rows)}
    return rows, stats
  return sample


def _settings(num_samples=4, rounds=2, max_samples=16, max_per_prompt=2):
  return ad.Settings(num_samples=num_samples, rounds=rounds, max_samples=max_samples,
                     max_per_prompt=max_per_prompt)


def _per_prompt(rows):
  return collections.Counter(r["prompt_id"] for r in rows)


def _indices(rows):
  out = collections.defaultdict(list)
  for r in rows:
    out[r["prompt_id"]].append(r["sample_idx"])
  return {p: sorted(v) for p, v in out.items()}


def test_done_prompts_get_no_more_samples():
  ids = ["easy", "hard", "half"]
  plans = []
  # easy passes every sample; half passes sample 1 only (one kept: not done at max 2).
  sample = _fake_sampler(lambda p, j: 5, lambda p, j: p == "easy" or (p == "half" and j == 1),
                         plans)
  rows, stats = ad.sample_in_rounds(ids, _settings(rounds=3), sample)
  assert [r for r, _ in plans] == [0, 1, 2]
  assert plans[0][1] == ad.Plan(("easy", "hard", "half"), 1, 0)
  # After round 1 easy has two kept samples: round 2 leaves it out.
  assert "easy" in plans[1][1].active and "easy" not in plans[2][1].active
  assert plans[2][1].active == ("hard", "half")
  counts = _per_prompt(rows)
  assert counts["easy"] == 1 + plans[1][1].samples
  assert counts["hard"] == counts["half"] > counts["easy"]
  # Indices continue where each prompt stopped: no gaps, no repeats.
  assert all(v == list(range(len(v))) for v in _indices(rows).values())
  assert stats["prompts_done"] == 1 and stats["rounds"] == 3
  assert stats["max_samples_per_prompt"] == counts["hard"]
  # Later samples of a done prompt could not have changed what the filter keeps.
  kept, _ = filtering.filter_samples(rows, max_per_prompt=2)
  assert [k["sample_idx"] for k in kept if k["prompt_id"] == "easy"] == [0, 1]


def test_budget_freed_by_done_prompts_goes_to_the_rest_up_to_the_cap():
  ids = [f"easy{i}" for i in range(9)] + ["hard"]
  rows, stats = ad.sample_in_rounds(
      ids, _settings(num_samples=4, rounds=2, max_samples=6, max_per_prompt=2),
      _fake_sampler(lambda p, j: 3, lambda p, j: p != "hard"))
  counts = _per_prompt(rows)
  # Budget 10 * 4 * 3 = 120 tokens; round 0 spends 60; the 60 left would buy 20 samples of
  # "hard", but the cap stops it at 6.
  assert stats["budget_tokens"] == 120
  assert counts["hard"] == 6 and all(counts[p] == 2 for p in ids[:-1])
  assert stats["max_samples_per_prompt"] == 6 and stats["prompts_done"] == 9


@pytest.mark.parametrize("rounds", [2, 3, 5])
def test_token_budget_is_spent_and_not_exceeded(rounds):
  ids = [f"p{i}" for i in range(7)]
  # Lengths differ by prompt and by sample; prompt p0 is done after its first sample.
  length = lambda p, j: 4 + (int(p[1:]) * 7 + j * 3) % 11
  rows, stats = ad.sample_in_rounds(
      ids, _settings(num_samples=8, rounds=rounds, max_samples=64, max_per_prompt=1),
      _fake_sampler(length, lambda p, j: p == "p0"))
  first = [r for r in rows if r["sample_idx"] < 8 // rounds]
  budget = len(ids) * 8 * sum(len(r["tokens"]) for r in first) // len(first)
  assert stats["budget_tokens"] == budget
  spent = sum(len(r["tokens"]) for r in rows)
  assert stats["new_tokens"] == spent and stats["completions"] == len(rows)
  # Within what mean lengths misestimate (lengths vary ~+-40% between samples).
  assert 0.9 * budget <= spent <= 1.1 * budget, (spent, budget)
  assert _per_prompt(rows)["p0"] == 8 // rounds
  assert stats["rounds"] in (rounds, rounds + 1)   # + the top-up when the budget buys one
  # Rates: this process's tokens and verdicts over its seconds, summed over rounds.
  assert stats["sample_s"] == stats["rounds"] and stats["tokens_per_s"] == pytest.approx(10.0)


def test_constant_lengths_spend_the_budget_exactly_within_one_sample_each():
  ids = ["a", "b", "c"]
  rows, stats = ad.sample_in_rounds(
      ids, _settings(num_samples=5, rounds=3, max_samples=100, max_per_prompt=None),
      _fake_sampler(lambda p, j: {"a": 2, "b": 3, "c": 7}[p], lambda p, j: True))
  spent = sum(len(r["tokens"]) for r in rows)
  assert spent <= stats["budget_tokens"] < spent + (2 + 3 + 7)


def test_without_max_per_prompt_no_prompt_is_ever_done():
  ids = ["a", "b"]
  plans = []
  rows, stats = ad.sample_in_rounds(
      ids, _settings(num_samples=6, rounds=3, max_per_prompt=None),
      _fake_sampler(lambda p, j: 4, lambda p, j: True, plans))
  assert all(p.active == ("a", "b") for _, p in plans) and len(plans) == 3
  assert stats["prompts_done"] == 0
  assert _per_prompt(rows) == {"a": 6, "b": 6}   # rounds of 2, 2, 2: the fixed K


def test_more_rounds_than_samples_still_spend_the_budget():
  plans = []
  # K = 2 in R = 4 rounds: each round's share is under one sample, yet the budget buys one.
  rows, stats = ad.sample_in_rounds(
      ["a", "b", "c"], _settings(num_samples=2, rounds=4, max_per_prompt=None),
      _fake_sampler(lambda p, j: 6, lambda p, j: False, plans))
  assert [(r, p.samples, p.offset) for r, p in plans] == [(0, 1, 0), (1, 1, 1)]
  assert _per_prompt(rows) == {"a": 2, "b": 2, "c": 2}
  assert stats["new_tokens"] == stats["budget_tokens"] == 3 * 2 * 6


def test_sampling_stops_when_a_round_would_get_no_sample():
  plans = []
  # Samples after the first are much longer than round 0 suggested: round 1 overspends, so
  # round 2 gets 0 samples and does not run.
  rows, stats = ad.sample_in_rounds(
      ["a", "b"], _settings(num_samples=3, rounds=3, max_per_prompt=None),
      _fake_sampler(lambda p, j: 10 if j == 0 else 40, lambda p, j: False, plans))
  assert [(r, p.samples) for r, p in plans] == [(0, 1), (1, 1)]
  assert stats["rounds"] == 2 and stats["budget_tokens"] == 2 * 3 * 10
  assert ad.plan_round(rows, ["a", "b"], _settings(num_samples=3, rounds=3,
                                                   max_per_prompt=None), 2, 60).active == ()


def test_the_top_up_round_spends_what_whole_samples_leave():
  plans = []
  # Budget 4 * 2 * 5 = 40 tokens; round 0 spends 20 and "e" is done; round 1 gives the other
  # three one sample each (15 tokens); the 5 left buy one sample, for the first of them.
  rows, stats = ad.sample_in_rounds(
      ["e", "h0", "h1", "h2"], _settings(num_samples=2, rounds=2, max_per_prompt=1),
      _fake_sampler(lambda p, j: 5, lambda p, j: p == "e", plans))
  assert [p for _, p in plans] == [ad.Plan(("e", "h0", "h1", "h2"), 1, 0),
                                   ad.Plan(("h0", "h1", "h2"), 1, 1),
                                   ad.Plan(("h0",), 1, 2, last=True)]
  assert stats["new_tokens"] == stats["budget_tokens"] == 40 and stats["rounds"] == 3
  assert _per_prompt(rows) == {"e": 1, "h0": 3, "h1": 2, "h2": 2}


def test_sampling_stops_when_every_prompt_is_done():
  plans = []
  rows, stats = ad.sample_in_rounds(["a", "b"], _settings(num_samples=4, rounds=4),
                                    _fake_sampler(lambda p, j: 3, lambda p, j: True, plans))
  # n0 = 1: one round of 1 sample, then one more makes both done (2 kept each).
  assert [p.samples for _, p in plans] == [1, 1] and stats["prompts_done"] == 2
  assert stats["rounds"] == 2 and len(rows) == 4


def test_plan_refuses_rows_of_uneven_rounds():
  rows = [{"prompt_id": p, "sample_idx": j, "tokens": [1], "completion": "x", "reward": 0.0}
          for p, n in (("a", 2), ("b", 3)) for j in range(n)]
  with pytest.raises(ValueError, match=r"round 1: the active prompts have \[2, 3\] samples"):
    ad.plan_round(rows, ["a", "b"], _settings(max_per_prompt=None), 1, 100)


@pytest.mark.parametrize("fields,match", [
    (dict(adaptive_rounds=-1), r"LoopConfig.adaptive_rounds=-1: expected >= 0"),
    (dict(adaptive_rounds=2, adaptive_max_samples=3),
     r"LoopConfig.adaptive_max_samples=3: expected None or >= .* = 4"),
    (dict(adaptive_rounds=0, adaptive_max_samples=0),
     r"LoopConfig.adaptive_max_samples=0: expected None or >= .* = 8"),
])
def test_loop_config_is_checked_when_the_loop_is_made(tmp_path, fields, match):
  with pytest.raises(ValueError, match=match):
    Loop(LoopConfig(workdir=str(tmp_path), num_samples=8, **fields), mesh=None)


def test_settings_of_a_loop_config():
  cfg = LoopConfig(workdir="w", num_samples=8, max_per_prompt=3)
  assert ad.Settings.of(cfg) is None
  s = ad.Settings.of(LoopConfig(workdir="w", num_samples=8, max_per_prompt=3, adaptive_rounds=3))
  assert (s.rounds, s.max_samples, s.max_per_prompt, s.first_samples) == (3, 32, 3, 2)
  s = ad.Settings.of(LoopConfig(workdir="w", num_samples=2, adaptive_rounds=4,
                                adaptive_max_samples=1))
  assert (s.first_samples, s.max_samples) == (1, 1)


def test_rest_mode_refuses_adaptive_rounds(tmp_path):
  with pytest.raises(ValueError, match=r"adaptive_rounds=2 is for mode='rest_em'"):
    ReSTLoop(LoopConfig(workdir=str(tmp_path), mode="rest", adaptive_rounds=2), mesh=None)


# ----------------------------------------------------------------------------- on the sampler

VOCAB = 384
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8)


@functools.lru_cache(maxsize=None)
def _sampler():
  mesh = mesh_lib.create_mesh((1, 1, 1), jax.devices()[:1])
  cfg = family_configs()["llama"].replace(vocab_size=VOCAB)
  graphdef, params = init_params(cfg, mesh, seed=2)
  sampler = Sampler(graphdef, cfg, ByteTokenizer(VOCAB), mesh, num_slots=8,
                    steps_per_dispatch=4, prompt_buckets=(32,), cache_buckets=(64,),
                    max_prefill_batch=4)
  return sampler, perturb(params, seed=2, scale=0.3)


class _Pool:
  """Passes completions of a length divisible by 3: some prompts are done early, some never."""

  def __init__(self):
    self.items = 0

  def verify(self, items):
    items = list(items)
    self.items += len(items)
    return [Verdict("pass" if len(i["completion"]) % 3 == 0 else "fail") for i in items]


PROBLEMS = [Problem(id=f"q{i}", prompt=f"{i} + {i * 3} =", reference="0", verifier="math")
            for i in range(6)]


def _shared(pool):
  sampler, params = _sampler()
  return dict(sampler=sampler, params=params, tokenizer=sampler.tokenizer, pool=pool,
              sampling=SAMPLING, seed=5)


def _rounds(stage_dir, settings, pool=None, records=None):
  record = None if records is None else (lambda sub: lambda done: records.append((sub, done)))
  return ad.run_rounds(PROBLEMS, epath.Path(stage_dir), settings, prompts_per_shard=4,
                       desc="test", record=record, **_shared(pool or _Pool()))


def _key(rows):
  return sorted((r["prompt_id"], r["sample_idx"], r["completion"], r["tokens"], r["reward"])
                for r in rows)


def test_rounds_summing_to_k_give_the_fixed_arms_samples(tmp_path):
  fixed, fstats = generate.run_shards(PROBLEMS, tmp_path / "fixed", prompts_per_shard=4,
                                      desc="fixed", num_samples=4, **_shared(_Pool()))
  records = []
  rows, stats = _rounds(tmp_path / "iter", _settings(num_samples=4, rounds=2,
                                                     max_per_prompt=None), records=records)
  assert stats["rounds"] == 2 and stats["max_samples_per_prompt"] == 4
  assert _key(rows) == _key(fixed)
  first = sum(len(r["tokens"]) for r in fixed if r["sample_idx"] < 2)
  assert stats["budget_tokens"] == 2 * first   # N * K * (round 0's tokens / (N * 2))
  assert stats["new_tokens"] == fstats["new_tokens"] and stats["completions"] == len(fixed)
  assert sorted(p.name for p in (tmp_path / "iter" / "samples").iterdir()) == [
      "round_00", "round_01"]
  assert [sub for sub, _ in records] == ["samples/round_00"] * 2 + ["samples/round_01"] * 2


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """Three rounds where prompts leave as they are done, uninterrupted."""
  d = tmp_path_factory.mktemp("adaptive") / "iter"
  rows, stats = _rounds(d, _settings(num_samples=4, rounds=3, max_per_prompt=1))
  return d, rows, stats


def _round_rows(round_dir):
  return [r for p in sorted(epath.Path(round_dir).glob("shard-*.jsonl"))
          for r in map(json.loads, p.read_text().splitlines())]


def _files(stage_dir):
  return {p.relative_to(stage_dir).as_posix(): p.read_text()
          for p in sorted(epath.Path(stage_dir).glob("samples/*/*.jsonl"))}


def test_prompts_leave_the_rounds_once_done(straight):
  d, rows, stats = straight
  assert stats["rounds"] >= 2 and 0 < stats["prompts_done"] < len(PROBLEMS)
  by_round = [_round_rows(p) for p in sorted((d / "samples").iterdir())]
  done_after_0 = ad.done_prompts(by_round[0], 1)
  assert done_after_0 and not done_after_0 & {r["prompt_id"] for r in by_round[1]}
  assert all(v == list(range(len(v))) for v in _indices(rows).values())


def test_a_lost_last_round_or_shard_is_sampled_again_identically(straight, tmp_path):
  d, rows, _ = straight
  copy = tmp_path / "iter"
  shutil.copytree(d, copy)
  rounds = sorted((copy / "samples").iterdir())
  shutil.rmtree(rounds[-1])
  next(iter(sorted(rounds[1].glob("shard-*.jsonl")))).unlink()
  untouched = {p: p.stat().st_mtime_ns for p in rounds[0].glob("shard-*.jsonl")}
  pool = _Pool()
  again, _ = _rounds(copy, _settings(num_samples=4, rounds=3, max_per_prompt=1), pool)
  assert _key(again) == _key(rows) and _files(copy) == _files(d)
  # Round 0 was read back, not sampled again.
  assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
  assert 0 < pool.items < len(rows)


def test_a_run_killed_between_rounds_resumes_identically(straight, tmp_path, monkeypatch):
  d, rows, _ = straight
  calls = []
  real = generate.run_shards

  def killed_after_round_0(*args, **kwargs):
    if calls:
      raise KeyboardInterrupt("killed")
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(generate, "run_shards", killed_after_round_0)
  with pytest.raises(KeyboardInterrupt):
    _rounds(tmp_path / "iter", _settings(num_samples=4, rounds=3, max_per_prompt=1))
  assert sorted(p.name for p in (tmp_path / "iter" / "samples").iterdir()) == ["round_00"]
  monkeypatch.setattr(generate, "run_shards", real)
  again, _ = _rounds(tmp_path / "iter", _settings(num_samples=4, rounds=3, max_per_prompt=1))
  assert _key(again) == _key(rows) and _files(tmp_path / "iter") == _files(d)


def test_reward_model_inputs_include_every_rounds_shards(tmp_path):
  names = ["iter_001/samples/round_00/shard-00000-of-00001.jsonl",
           "iter_001/samples/round_01/shard-00000-of-00001.jsonl",
           "iter_002/samples/shard-00000-of-00001.jsonl",
           "iter_001/eval_heldout/shard-00000-of-00001.jsonl"]
  for name in names:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("")
  assert reward_data.workdir_shards(tmp_path) == [str(tmp_path / n) for n in names[:3]]


# ----------------------------------------------------------------------------- the loop

LOOP = [
    "--gin_file=runs/demo.gin",
    "--gin.LoopConfig.iterations=1", "--gin.LoopConfig.sft_baseline=False",
    "--gin.LoopConfig.num_train_prompts=16", "--gin.LoopConfig.num_human_solutions=16",
    "--gin.LoopConfig.num_val_prompts=0", "--gin.LoopConfig.num_eval_prompts=8",
    "--gin.LoopConfig.num_eval_train_prompts=4", "--gin.LoopConfig.num_samples=4",
    "--gin.LoopConfig.max_per_prompt=1", "--gin.LoopConfig.adaptive_rounds=2",
    "--gin.LoopConfig.eval_samples=1", "--gin.LoopConfig.eval_ks=(1,)",
    "--gin.LoopConfig.prompts_per_shard=8", "--gin.LoopConfig.base_sft_steps=20",
    "--gin.LoopConfig.max_new_tokens=32", "--gin.LoopConfig.sampler_slots=16",
    "--gin.ImproveConfig.steps=4", "--gin.create_mesh.shape=(1, 2, 1)",
    # Mechanics, not learning: with a base this short, answers alone keep samples flowing.
    "--gin.arithmetic_task.check_work=False",
]


def test_an_adaptive_iteration_end_to_end(tmp_path):
  rh.run(LOOP, tmp_path)
  it = tmp_path / "iter_001"
  samples = it / "samples"
  counts = rh.read_json(tmp_path, "iter_001/counts.json")["counts"]
  # Two rounds, and the top-up when the budget left buys a sample.
  assert counts["rounds"] in (2, 3)
  assert sorted(p.name for p in samples.iterdir()) == [
      f"round_{r:02d}" for r in range(counts["rounds"])]
  assert sorted(p.name for p in (samples / "round_00").iterdir()) == [
      "shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
  rounds = [_round_rows(samples / f"round_{r:02d}") for r in range(counts["rounds"])]
  first, second = rounds[0], rounds[1]
  assert len(first) == 16 * 2 and {r["sample_idx"] for r in first} == {0, 1}
  done = ad.done_prompts(first, 1)
  assert second and not done & {r["prompt_id"] for r in second}
  assert min(r["sample_idx"] for r in second) == 2
  if len(rounds) == 3:  # the top-up: one more sample for some of round 1's prompts
    top_up = {r["prompt_id"] for r in rounds[2]}
    assert top_up <= {r["prompt_id"] for r in second} and len(rounds[2]) == len(top_up)
  every = [r for rows in rounds for r in rows]
  assert counts["samples"] == len(every)
  assert counts["budget_tokens"] > 0 and counts["prompts_done"] >= len(done)
  assert counts["max_samples_per_prompt"] == max(_per_prompt(every).values())
  kept, _ = filtering.filter_samples(every, max_per_prompt=1)
  assert (it / "kept.jsonl").read_text().splitlines() == [
      json.dumps(k, sort_keys=True) for k in kept]
  state = rh.read_json(tmp_path, "state.json")
  assert state["finished"] and "iter_001/filter" in state["done"]
  assert "iter_001/samples/round_01" in state["shards"]
  metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any(m.get("rounds") == counts["rounds"] and "budget_tokens" in m for m in metrics)


def test_verifying_while_the_next_shard_samples_gives_the_same_shards(tmp_path, monkeypatch):
  """`overlap=True` (LoopConfig.verify_overlap): the same rows and counts as verifying each
  shard in turn; `record` never names a shard before its file is written; and a preemption
  request keeps the shard being verified."""
  from rest_jax.runtime import preemption
  problems = PROBLEMS * 1 + [Problem(id=f"r{i}", prompt=f"{i} * 2 =", reference="0",
                                     verifier="math") for i in range(6)]
  in_turn, s1 = generate.run_shards(problems, tmp_path / "a", prompts_per_shard=4, desc="a",
                                    num_samples=2, **_shared(_Pool()))
  seen = []
  shard_dir = epath.Path(tmp_path / "b")

  def record(done):
    seen.append(done)
    assert all(any(shard_dir.glob(f"shard-{i:05d}-*")) for i in done), done

  pool = _Pool()
  overlapped, s2 = generate.run_shards(problems, shard_dir, prompts_per_shard=4, desc="b",
                                       num_samples=2, record=record, overlap=True,
                                       **_shared(pool))
  assert _key(overlapped) == _key(in_turn) and pool.items == len(in_turn) == 24
  assert s2["completions"] == s1["completions"] == s2["verified"] == 24
  assert seen[-1] == [0, 1, 2] and seen[0] == [0]   # one round behind, then all of them

  # A stop request after the first round: the shard verified meanwhile is written too.
  checks = []

  def check(where):
    checks.append(where)
    if len(checks) == 2:
      raise preemption.Preempted(where)

  monkeypatch.setattr(preemption, "check", check)
  with pytest.raises(preemption.Preempted):
    generate.run_shards(problems, tmp_path / "c", prompts_per_shard=4, desc="c", num_samples=2,
                        overlap=True, **_shared(_Pool()))
  assert sorted(p.name for p in epath.Path(tmp_path / "c").iterdir()) == [
      f"shard-{i:05d}-of-00003.jsonl" for i in (0, 1)]
