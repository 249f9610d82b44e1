"""ReST's threshold schedule, kept-set selection, loss weights, reward sources and metrics."""

import numpy as np
import pytest

from rest_jax.loop import rest_schedule
from rest_jax.rewards import sources as rewards
from rest_jax.rewards import metrics as rm_metrics
from rest_jax.tasks import base


def _rows(num_prompts=6, k=8, seed=0):
  rng = np.random.default_rng(seed)
  rows, scores = [], []
  for p in range(num_prompts):
    for j in range(k):
      s = float(rng.uniform())
      rows.append({"prompt_id": f"p{p}", "sample_idx": j, "prompt": f"Q{p}",
                   "completion": f"answer {p}-{j}", "reward": float(s > 0.6)})
      scores.append(s)
  return rows, scores


@pytest.mark.parametrize("mode,thresholds", [("absolute", (0.2, 0.5, 0.8)),
                                             ("quantile", (0.0, 0.5, 0.75))])
def test_kept_set_shrinks_as_thresholds_rise(mode, thresholds):
  rows, scores = _rows()
  taus = rest_schedule.check_schedule(thresholds, mode, 3)
  kept_sets, mean_taus = [], []
  for value in taus:
    kept, counts = rest_schedule.select(rows, scores, value=value, mode=mode)
    kept_sets.append({(k["prompt_id"], k["sample_idx"]) for k in kept})
    mean_taus.append(counts["threshold_mean"])
    assert all(k["score"] >= k["threshold"] for k in kept)
    assert counts["kept"] == len(kept)
  # Thresholds rise and each step's kept set is a strict subset of the previous one.
  assert mean_taus[0] < mean_taus[1] < mean_taus[2]
  assert kept_sets[0] > kept_sets[1] > kept_sets[2]
  if mode == "quantile":
    # Per-prompt quantiles keep every prompt's best sample, whatever its absolute score.
    assert len({pid for pid, _ in kept_sets[2]}) == 6
    assert len(kept_sets[0]) == 48 and len(kept_sets[1]) == 24


def test_quantile_thresholds_are_per_prompt_and_floor_applies():
  rows = [{"prompt_id": "easy", "sample_idx": j, "completion": f"e{j}", "reward": 1.0}
          for j in range(4)] + [{"prompt_id": "hard", "sample_idx": j, "completion": f"h{j}",
                                 "reward": 0.0} for j in range(4)]
  scores = [0.9, 0.8, 0.95, 0.85, 0.1, 0.3, 0.2, 0.05]
  kept, counts = rest_schedule.select(rows, scores, value=0.75, mode="quantile")
  assert [(k["prompt_id"], k["sample_idx"]) for k in kept] == [("easy", 2), ("hard", 1)]
  assert counts["kept_verifier_accuracy"] == 0.5
  kept, counts = rest_schedule.select(rows, scores, value=0.75, mode="quantile", min_score=0.5)
  assert [(k["prompt_id"], k["sample_idx"]) for k in kept] == [("easy", 2)]
  assert counts["kept_verifier_accuracy"] == 1.0 and counts["prompts_solved"] == 1


def test_dedupe_and_cap_keep_the_highest_scores():
  rows = [{"prompt_id": "p", "sample_idx": j, "completion": c, "reward": 1.0}
          for j, c in enumerate(["a", "b", "a ", "c"])]
  kept, counts = rest_schedule.select(rows, [0.1, 0.5, 0.9, 0.7], value=0.0, mode="absolute",
                                      max_per_prompt=2)
  assert [k["sample_idx"] for k in kept] == [2, 3]  # "a " (0.9) beats its duplicate "a"
  assert counts["duplicates"] == 1 and counts["capped"] == 1


def test_human_solutions_compete_for_places_but_are_counted_apart():
  # The Grow dataset D_g = samples ∪ D: a human solution is kept when it scores high enough,
  # takes a place under the cap, and leaves the samples' counts and accuracy alone.
  rows = [{"prompt_id": "p", "sample_idx": j, "completion": f"s{j}", "reward": float(j == 0)}
          for j in range(3)]
  rows.append({"prompt_id": "p", "sample_idx": 3, "completion": "h", "reward": 1.0,
               "human": True})
  kept, counts = rest_schedule.select(rows, [0.9, 0.6, 0.2, 0.8], value=0.5, mode="absolute",
                                      max_per_prompt=2)
  assert [k["sample_idx"] for k in kept] == [0, 3]      # 0.9 and the human 0.8; 0.6 capped
  assert counts["samples"] == 3 and counts["passed"] == 1
  assert counts["human"] == 1 and counts["kept_human"] == 1 and counts["kept"] == 2
  assert counts["kept_verifier_accuracy"] == 1.0        # sample 0 alone, not the human one
  kept, counts = rest_schedule.select(rows, [0.9, 0.6, 0.2, 0.3], value=0.5, mode="absolute")
  assert counts["kept_human"] == 0 and counts["kept_verifier_accuracy"] == 0.5
  _, counts = rest_schedule.select(rows[:3], [0.9, 0.6, 0.2], value=0.5, mode="absolute")
  assert "human" not in counts and "kept_human" not in counts


def test_bad_schedules_are_refused():
  with pytest.raises(ValueError, match="must not decrease"):
    rest_schedule.check_schedule((0.5, 0.2), "absolute", 2)
  with pytest.raises(ValueError, match="one threshold per Improve step"):
    rest_schedule.check_schedule((0.5,), "absolute", 2)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    rest_schedule.check_schedule((0.5, 1.5), "quantile", 2)
  with pytest.raises(ValueError, match="threshold_mode"):
    rest_schedule.check_schedule((0.5,), "global", 1)


def test_example_weights():
  assert rest_schedule.example_weights([0.3, 0.9], "bc") == [1.0, 1.0]
  w = rest_schedule.example_weights([0.5, 1.0], "reward_weighted", all_scores=[0.0, 0.5, 1.0])
  assert np.mean(w) == pytest.approx(1.0) and w[1] == pytest.approx(2 * w[0])
  with pytest.raises(ValueError, match="loss"):
    rest_schedule.example_weights([1.0], "ppo")


def test_roc_auc_and_best_of_n():
  assert rm_metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert rm_metrics.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
  assert rm_metrics.roc_auc([0.1, 0.2], [1, 1]) is None
  per_prompt = {"a": [{"reward": 0.0, "score": 0.2}, {"reward": 1.0, "score": 0.9}],
                "b": [{"reward": 1.0, "score": 0.1}, {"reward": 0.0, "score": 0.7}]}
  assert rm_metrics.best_of_n(per_prompt, (1, 2, 4)) == {"rm_best_of_1": 0.5,
                                                        "rm_best_of_2": 0.5}


def user_reward(problem, completion):
  return float(len(completion)) + len(problem.prompt)


def test_reward_sources():
  rows = [{"prompt": "q", "completion": "abc", "reward": 1.0, "sample_idx": 1, "prompt_id": "p"}]
  assert rewards.make_reward_source("verifier").score(rows) == [1.0]
  problems = {"p": base.Problem(id="p", prompt="q?", reference="1", verifier="math")}
  assert rewards.make_reward_source("test_rest_schedule:user_reward",
                                    problems=problems).score(rows) == [5.0]
  with pytest.raises(rewards.RewardSourceError, match="'x'#1 answers no problem"):
    rewards.make_reward_source("test_rest_schedule:user_reward", problems=problems).score(
        [{**rows[0], "prompt_id": "x"}])
  with pytest.raises(rewards.RewardSourceError, match="cannot import module"):
    rewards.make_reward_source("no_such_module_xyz:f")
  with pytest.raises(rewards.RewardSourceError, match="has no 'nope'"):
    rewards.make_reward_source("test_rest_schedule:nope")
  with pytest.raises(rewards.RewardSourceError, match="expected 'verifier'"):
    rewards.make_reward_source("bogus")
  with pytest.raises(rewards.RewardSourceError, match="needs a trained reward model"):
    rewards.make_reward_source("reward_model")
  bad = rewards.CallableReward("test_rest_schedule:_nan_reward", problems)
  with pytest.raises(rewards.RewardSourceError, match="finite number"):
    bad.score(rows)


def _nan_reward(problem, completion):
  return float("nan")
