import itertools

import numpy as np
import pytest

from rest_jax.loop import evaluation
from rest_jax.loop import filtering


def _brute_pass_at_k(n, c, k):
  """Fraction of k-subsets of n samples that contain a correct one."""
  items = [1] * c + [0] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (8, 1, 8),
                                   (7, 6, 2), (4, 4, 4)])
def test_pass_at_k_matches_enumeration(n, c, k):
  assert evaluation.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_errors():
  with pytest.raises(ValueError, match="k=9 exceeds"):
    evaluation.pass_at_k(8, 1, 9)
  with pytest.raises(ValueError, match="0 <= c <= n"):
    evaluation.pass_at_k(8, 9, 1)


def test_majority_vote():
  assert evaluation.majority_correct(["4", "5", "4"], [True, False, True])
  assert not evaluation.majority_correct(["5", "5", "4"], [False, False, True])
  assert not evaluation.majority_correct([None, None], [False, False])
  # A tie goes to the answer seen first.
  assert evaluation.majority_correct(["4", "5"], [True, False])


def test_summarize():
  per_prompt = {
      "a": [{"reward": 1.0, "extracted": "1"}, {"reward": 0.0, "extracted": "2"},
            {"reward": 1.0, "extracted": "1"}, {"reward": 0.0, "extracted": "3"}],
      "b": [{"reward": 0.0, "extracted": "9"}] * 4,
  }
  m = evaluation.summarize(per_prompt, ks=(1, 4), greedy={"a": True, "b": False})
  assert m["pass@1"] == pytest.approx(0.25)
  assert m["pass@4"] == pytest.approx(0.5)
  assert m["maj@4"] == pytest.approx(0.5)
  assert m["solved_prompts"] == 1 and m["greedy_pass@1"] == 0.5
  lo, hi = m["pass@1_ci95"]
  assert 0.0 <= lo <= 0.25 <= hi <= 0.5


def test_maj_at_k_counts_a_prompt_without_answers_as_not_correct():
  answered = lambda answers, correct: [{"reward": float(ok), "extracted": a}
                                       for a, ok in zip(answers, correct)]
  per_prompt = {
      "right": answered(["1", "1", "2", "1"], [True, True, False, True]),
      "wrong": answered(["9", "9", "1", None], [False, False, True, False]),
      "silent": [{"reward": 0.0, "extracted": None}] * 4,  # no answer in any sample
  }
  m = evaluation.summarize(per_prompt, ks=(1, 2, 4))
  assert m["maj@2"] == pytest.approx(1 / 3) and m["maj@4"] == pytest.approx(1 / 3)
  # An answerless prompt that still passed (a code-style verdict) is not a majority win.
  per_prompt["silent"] = [{"reward": 1.0, "extracted": None}] * 4
  assert evaluation.summarize(per_prompt, ks=(4,))["maj@4"] == pytest.approx(1 / 3)
  # No extracted answer anywhere (code): maj@k is left out, pass@k stays.
  code = {pid: [{"reward": s["reward"]} for s in samples] for pid, samples in per_prompt.items()}
  m = evaluation.summarize(code, ks=(1, 4))
  assert "maj@4" not in m and m["pass@4"] == pytest.approx(1.0)


def test_bootstrap_interval_covers_mean_and_narrows():
  rng = np.random.default_rng(0)
  small = rng.random(20) < 0.3
  large = rng.random(2000) < 0.3
  lo_s, hi_s = evaluation.bootstrap_ci(small)
  lo_l, hi_l = evaluation.bootstrap_ci(large)
  assert lo_l <= large.mean() <= hi_l and lo_s <= small.mean() <= hi_s
  assert (hi_l - lo_l) < (hi_s - lo_s)


def _s(pid, j, text, reward=1.0):
  return {"prompt_id": pid, "sample_idx": j, "completion": text, "reward": reward}


def test_filter_keeps_correct_dedupes_and_caps():
  samples = [_s("p", 3, "x = 1\n"), _s("p", 0, "x = 1"), _s("p", 1, "x  =  1", 1.0),
             _s("p", 2, "wrong", 0.0), _s("q", 0, "a"), _s("q", 1, "b"), _s("q", 2, "c"),
             _s("r", 0, "nope", 0.0)]
  kept, counts = filtering.filter_samples(samples, max_per_prompt=2)
  assert [(k["prompt_id"], k["sample_idx"]) for k in kept] == [("p", 0), ("q", 0), ("q", 1)]
  assert counts == {"samples": 8, "prompts": 3, "passed": 6, "duplicates": 2, "capped": 1,
                    "kept": 3, "prompts_solved": 2}


def test_filter_is_order_independent():
  samples = [_s(p, j, f"{p}{j % 3}") for p in "abc" for j in range(6)]
  a, _ = filtering.filter_samples(samples, max_per_prompt=2)
  b, _ = filtering.filter_samples(list(reversed(samples)), max_per_prompt=2)
  assert a == b


def test_per_prompt_maj_at_k_counts_an_answerless_prompt_as_not_correct():
  per_prompt = {
      "a": [{"reward": 1.0, "extracted": "3"}, {"reward": 1.0, "extracted": "3"}],
      "b": [{"reward": 0.0, "extracted": None}, {"reward": 0.0, "extracted": None}],
      "c": [{"reward": 0.0, "extracted": "5"}, {"reward": 0.0, "extracted": "5"}],
  }
  split = evaluation.summarize(per_prompt, ks=(1, 2))
  values = evaluation.per_prompt_metrics(per_prompt, ks=(1, 2))
  assert values["maj@2"] == [1.0, 0.0, 0.0]
  for name, vals in values.items():
    assert np.mean(vals) == pytest.approx(split[name])
