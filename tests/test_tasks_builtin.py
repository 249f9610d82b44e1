"""Built-in tasks load offline from shipped packages, with fixed, documented splits."""

import os
import re

import pytest

from rest_jax.tasks import CODE_VERIFIER, MATH_VERIFIER, TEST, TRAIN, TaskDataError, get_task
from rest_jax.tasks import gsm8k as gsm8k_lib
from rest_jax.tasks import math500 as math500_lib


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


SPLIT_SIZES = {
    "gsm8k": (1000, 319),
    "math500": (211, 100),
    "humaneval": (100, 64),
    "arithmetic": (2000, 200),
}


@pytest.mark.parametrize("name", sorted(SPLIT_SIZES))
def test_builtin_task_loads_offline_with_split_sizes(name):
  task = get_task(name)
  assert (task.num_problems(TRAIN), task.num_problems(TEST)) == SPLIT_SIZES[name]
  train, test = task.problems(TRAIN), task.problems(TEST)
  assert not {p.id for p in train} & {p.id for p in test}
  assert {p.verifier for p in train + test} == {task.verifier}
  assert all(p.prompt == task.render_prompt(p.meta["question"]) for p in train[:20])


def test_hash_splits_are_fixed():
  # The documented splits must not drift: results are compared across runs and versions.
  assert [p.id for p in get_task("gsm8k").problems(TEST)[:3]] == [
      "gsm8k-test-0001", "gsm8k-test-0003", "gsm8k-test-0009"]
  assert [p.id for p in get_task("math500").problems(TEST)[:3]] == [
      "math500-0005", "math500-0016", "math500-0024"]
  assert [p.id for p in get_task("humaneval").problems(TEST)[:3]] == [
      "HumanEval/1", "HumanEval/7", "HumanEval/8"]


def test_growing_num_test_only_moves_problems_from_train_to_test():
  small = {p.id for p in get_task("gsm8k", num_test=319).problems(TEST)}
  big = get_task("gsm8k", num_test=500)
  assert big.num_problems(TEST) == 500 and big.num_problems(TRAIN) == 819
  assert small < {p.id for p in big.problems(TEST)}


def test_gsm8k_references_and_human_solutions():
  task = get_task("gsm8k")
  problems = {p.id: p for p in task.problems(TRAIN) + task.problems(TEST)}
  assert problems["gsm8k-test-0000"].reference == "18"
  assert problems["gsm8k-test-0000"].meta["question"].startswith("Janet")
  assert problems["gsm8k-test-0146"].reference == "2125"  # "#### 2,125" in the data
  for p in problems.values():
    assert re.fullmatch(r"-?\d+", p.reference), p.id
    assert "<<" not in p.solution, p.id
    # The plain prompt ends with "Answer:", so the completion starts with a space.
    assert p.solution.startswith(" ") and p.solution.endswith(f"\n#### {p.reference}"), p.id
  assert len(task.human_sft_examples(TRAIN)) == 1000


def test_gsm8k_parse_solution_rejects_malformed_answers():
  assert gsm8k_lib.parse_solution("a <<1+1=2>>2\n#### 1,000") == ("a 2\n#### 1000", "1000")
  with pytest.raises(ValueError, match="one '#### <answer>'"):
    gsm8k_lib.parse_solution("no marker here")


def _write_prepared_gsm8k(data_dir, train_rows, test_rows):
  """A prepared tfds gsm8k, written directly (no builder, nothing downloaded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import dataset_info, sequential_writer  # pylint: disable=g-import-not-at-top

  version_dir = os.path.join(data_dir, "gsm8k", "1.0.0")
  os.makedirs(version_dir)
  names = ("question", "answer", "annotation", "short_answer")
  info = tfds.core.DatasetInfo(
      builder=dataset_info.DatasetIdentity(name="gsm8k", version=tfds.core.Version("1.0.0"),
                                           data_dir=version_dir, module_name="test"),
      features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in names}))
  writer = sequential_writer.SequentialWriter(info, max_examples_per_shard=100)
  writer.initialize_splits([TRAIN, TEST])

  def rows(pairs):
    return [{"question": q, "answer": a, "annotation": "", "short_answer": ""} for q, a in pairs]

  writer.add_examples({TRAIN: rows(train_rows), TEST: rows(test_rows)})
  writer.close_all()


def test_gsm8k_uses_real_splits_of_a_prepared_tfds_dataset(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _write_prepared_gsm8k(data_dir,
                        [("q0", "a <<2*3=6>>6\n#### 6"), ("q1", "b\n#### 7"), ("q2", "c\n#### 8")],
                        [("t0", "d\n#### 1,000"), ("t1", "e\n#### 2")])
  task = get_task("gsm8k", tfds_data_dir=data_dir)
  assert "tfds" in task.source
  assert (task.num_problems(TRAIN), task.num_problems(TEST)) == (3, 2)
  first = task.problems(TRAIN)[0]
  assert (first.id, first.reference, first.solution) == ("gsm8k-train-0000", "6", " a 6\n#### 6")
  assert [p.reference for p in task.problems(TEST)] == ["1000", "2"]
  # use_tfds=False ignores it.
  assert get_task("gsm8k", tfds_data_dir=data_dir, use_tfds=False).num_problems(TRAIN) == 1000


def test_gsm8k_ignores_unprepared_tfds_directories(tmp_path):
  os.makedirs(tmp_path / "gsm8k" / "1.0.0")  # no dataset_info.json: not prepared
  os.makedirs(tmp_path / "gsm8k" / "1.0.0.incomplete4NR2")
  assert gsm8k_lib.find_prepared_tfds(str(tmp_path)) is None
  assert get_task("gsm8k", tfds_data_dir=str(tmp_path)).num_problems(TEST) == 319


def test_math500_references_and_exemplars():
  task = get_task("math500")
  assert task.verifier == MATH_VERIFIER
  problems = {p.id: p for p in task.problems(TRAIN) + task.problems(TEST)}
  assert len(problems) == 311
  p = problems["math500-0003"]
  assert p.meta["question"] == "How many positive whole-number divisors does 196 have?"
  assert p.reference == "9" and p.solution is None
  questions = {q.meta["question"] for q in problems.values()}
  assert not questions & {e.question for e in math500_lib.FEWSHOT}
  assert all("\\boxed{" in e.solution for e in math500_lib.FEWSHOT)
  with pytest.raises(TaskDataError, match="no problem has a human solution"):
    task.human_sft_examples()


def test_humaneval_references_and_canonical_solutions_pass_their_tests():
  task = get_task("humaneval")
  assert task.verifier == CODE_VERIFIER and task.prompt_format.style == "raw"
  problems = task.problems(TRAIN) + task.problems(TEST)
  assert len(problems) == 164
  for p in problems:
    assert set(p.reference) == {"test", "entry_point"}
    assert p.prompt == p.meta["code_prompt"]
    assert p.meta["completion_mode"] == "continuation"
  # "continuation": the program is the prompt followed by the completion.
  for p in problems[:15]:
    scope = {}
    exec(p.prompt + p.solution + "\n" + p.reference["test"], scope)  # pylint: disable=exec-used
    scope["check"](scope[p.reference["entry_point"]])


def test_unknown_task_and_split_are_named():
  with pytest.raises(KeyError, match="registered tasks"):
    get_task("nope")
  with pytest.raises(ValueError, match="no split 'validation'"):
    get_task("humaneval").problems("validation")
