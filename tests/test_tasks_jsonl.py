"""User JSONL tasks and kept.jsonl: splits, formats, and bad lines reported by number."""

import json

import pytest

from rest_jax.tasks import (TEST, TRAIN, KeptDataError, PromptFormat, TaskDataError, get_task,
                            parse_kept_lines, read_kept, register_jsonl_task,
                            sft_examples_from_kept)
from rest_jax.tasks import base


pytestmark = pytest.mark.usefixtures("offline")  # conftest.py: no network


def _write(path, lines):
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
  return str(path)


def _math_rows(n):
  return [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]


def test_math_file_split_by_seeded_fraction(tmp_path):
  path = _write(tmp_path / "m.jsonl", _math_rows(40))
  task = get_task("jsonl", path=path, test_fraction=0.25)
  assert task.verifier == "math"
  assert (task.num_problems(TRAIN), task.num_problems(TEST)) == (30, 10)
  again = get_task("jsonl", path=path, test_fraction=0.25)
  assert [p.id for p in again.problems(TEST)] == [p.id for p in task.problems(TEST)]
  other = get_task("jsonl", path=path, test_fraction=0.25, seed=1)
  assert {p.id for p in other.problems(TEST)} != {p.id for p in task.problems(TEST)}
  p = task.problems(TRAIN)[0]
  assert p.prompt == f"Question: {p.meta['question']}\nAnswer:"
  assert p.reference == str(2 * int(p.id[1:]))


def test_numbers_and_extra_keys_and_solutions(tmp_path):
  path = _write(tmp_path / "m.jsonl", [
      {"id": 7, "prompt": "Half of 1?", "answer": 0.5, "level": 3, "solution": "1/2 = 0.5"},
      {"id": "b", "prompt": "2*3?", "answer": 6}])
  task = get_task("jsonl", path=path, num_test=0)
  a, b = task.problems(TRAIN)
  assert (a.id, a.reference, a.meta["level"]) == ("7", "0.5", 3)
  assert a.meta["source"].endswith(":1") and b.meta["source"].endswith(":2")
  assert b.reference == "6" and b.solution is None
  assert [e.completion for e in task.human_sft_examples()] == [" 1/2 = 0.5"]


def test_code_files_as_splits(tmp_path):
  train = _write(tmp_path / "train.jsonl", [
      {"id": "c1", "prompt": "def add(a, b):\n", "solution": "    return a + b\n",
       "tests": {"test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}}])
  test = _write(tmp_path / "test.jsonl", [
      {"id": "c2", "prompt": "Read two ints and print their sum.",
       "tests": {"inputs": ["1 2\n"], "outputs": ["3\n"]}}])
  task = get_task("jsonl", train_path=train, test_path=test)
  assert task.verifier == "code" and task.prompt_format.style == "raw"
  (c1,), (c2,) = task.problems(TRAIN), task.problems(TEST)
  assert c1.prompt == "def add(a, b):\n" and c1.reference["entry_point"] == "add"
  assert c1.meta["code_prompt"] == c1.prompt and "code_prompt" not in c2.meta
  assert c1.meta["completion_mode"] == "continuation"
  scope = {}
  exec(c1.meta["code_prompt"] + c1.solution + c1.reference["test"], scope)  # pylint: disable=exec-used
  scope["check"](scope["add"])
  assert c2.reference == {"inputs": ["1 2\n"], "outputs": ["3\n"]}
  only_test = get_task("jsonl", test_path=test)
  assert only_test.num_problems(TRAIN) == 0 and only_test.num_problems(TEST) == 1


def test_bad_line_fails_with_its_line_number(tmp_path):
  rows = _math_rows(4)
  rows[2] = {"id": "p2", "prompt": "What is 2 + 2?", "anwser": "4"}  # typo: no answer
  path = _write(tmp_path / "bad.jsonl", rows)
  with pytest.raises(TaskDataError) as e:
    get_task("jsonl", path=path, num_test=1)
  msg = str(e.value)
  assert f"{path}:3:" in msg and "exactly one of 'answer' (math) or 'tests' (code)" in msg
  assert ":1:" not in msg and ":2:" not in msg and ":4:" not in msg


def test_every_bad_line_is_reported(tmp_path):
  path = _write(tmp_path / "bad.jsonl", [
      {"id": "a", "prompt": "ok?", "answer": "1"},
      "{not json",
      "",  # blank: no problem, but still counted as a line
      {"id": "a", "prompt": "again", "answer": "2"},
      {"id": "c", "prompt": "", "answer": "3"},
      {"id": "d", "prompt": "code?", "tests": {"inputs": ["1"], "outputs": []}},
      {"id": "e", "prompt": "code?", "tests": {"cases": []}},
      ["a", "list"],
      {"id": True, "prompt": "p", "answer": "1"},
  ])
  with pytest.raises(TaskDataError) as e:
    get_task("jsonl", path=path, num_test=0)
  msg = str(e.value)
  assert msg.startswith("7 malformed line(s)")
  assert f"{path}:2: not valid JSON" in msg
  assert f"{path}:4: duplicate id 'a' (first on line 1)" in msg
  assert f"{path}:5: expected a non-empty string 'prompt'" in msg
  assert f"{path}:6: 'tests' needs as many 'outputs' as 'inputs'" in msg
  assert f"{path}:7: 'tests' must be" in msg
  assert f"{path}:8: expected a JSON object, got list" in msg
  assert f"{path}:9: expected a non-empty string 'id'" in msg


def test_mixed_kinds_in_one_task_are_refused(tmp_path):
  path = _write(tmp_path / "mixed.jsonl", [
      {"id": "a", "prompt": "1+1?", "answer": "2"},
      {"id": "b", "prompt": "def f():\n", "tests": {"test": "x", "entry_point": "f"}}])
  with pytest.raises(TaskDataError, match=r":2: a code problem, but line 1 is a math problem"):
    get_task("jsonl", path=path, num_test=0)


def test_split_arguments_are_checked(tmp_path):
  path = _write(tmp_path / "m.jsonl", _math_rows(3))
  with pytest.raises(ValueError, match="exactly one of test_fraction or num_test"):
    get_task("jsonl", path=path)
  with pytest.raises(ValueError, match="not both"):
    get_task("jsonl", path=path, train_path=path, num_test=1)
  with pytest.raises(ValueError, match="no problems file"):
    get_task("jsonl")
  with pytest.raises(TaskDataError, match="no such problems file"):
    get_task("jsonl", path=str(tmp_path / "missing.jsonl"), num_test=0)
  with pytest.raises(TaskDataError, match="ids in both"):
    get_task("jsonl", train_path=path, test_path=path)


def test_registered_under_its_own_name_with_few_shot_file(tmp_path, monkeypatch):
  # Keep the registration local to this test.
  monkeypatch.setattr(base, "_FACTORIES", dict(base._FACTORIES))
  monkeypatch.setattr(base, "_DESCRIPTIONS", dict(base._DESCRIPTIONS))
  path = _write(tmp_path / "m.jsonl", _math_rows(10))
  shots = _write(tmp_path / "shots.jsonl", [
      {"id": "s1", "prompt": "1 + 1?", "answer": "2", "solution": "1 + 1 = 2. \\boxed{2}"}])
  register_jsonl_task("my_math", path=path, num_test=2, fewshot_path=shots)
  task = get_task("my_math", prompt_format=PromptFormat(num_shots=1))
  assert task.name == "my_math" and task.num_problems(TEST) == 2
  assert task.problems(TRAIN)[0].prompt.startswith(
      "Question: 1 + 1?\nAnswer: 1 + 1 = 2. \\boxed{2}\n\nQuestion: ")
  with pytest.raises(ValueError, match="taken by a built-in task"):
    register_jsonl_task("gsm8k", path=path, num_test=1)


# --- kept.jsonl ---------------------------------------------------------------------------


def _kept(i, **kw):
  row = {"prompt_id": f"p{i}", "prompt": f"Q{i}", "completion": f" A{i}", "reward": 1.0,
         "sample_idx": i}
  row.update(kw)
  return row


def test_read_kept_and_make_sft_examples(tmp_path):
  path = _write(tmp_path / "kept.jsonl", [_kept(0), _kept(1, reward=0.5, iteration=2), ""])
  samples = read_kept(path)
  assert [s.prompt_id for s in samples] == ["p0", "p1"]
  assert samples[1].extra == {"iteration": 2}
  uniform = sft_examples_from_kept(samples)
  assert [(e.prompt, e.completion, e.weight) for e in uniform] == [("Q0", " A0", 1.0),
                                                                   ("Q1", " A1", 1.0)]
  assert [e.weight for e in sft_examples_from_kept(samples, weighting="reward")] == [1.0, 0.5]
  assert uniform[1].source_id == "p1#1"


def test_kept_bad_lines_are_reported_with_line_numbers():
  lines = [json.dumps(_kept(0)),
           json.dumps({k: v for k, v in _kept(1).items() if k != "completion"}),
           json.dumps(_kept(2, reward=True)),
           "[1, 2",
           json.dumps(_kept(4, sample_idx=-1)),
           json.dumps(_kept(5, tokens=[1, "x"]))]
  with pytest.raises(KeptDataError) as e:
    parse_kept_lines(lines, source="kept.jsonl")
  msg = str(e.value)
  assert msg.startswith("5 malformed kept-sample line(s)")
  assert "kept.jsonl:2: missing key(s) ['completion']" in msg
  assert "kept.jsonl:3: 'reward' must be a number" in msg
  assert "kept.jsonl:4: not valid JSON" in msg
  assert "kept.jsonl:5: 'sample_idx' must be a non-negative integer" in msg
  assert "kept.jsonl:6: 'tokens' must be a list of integer token ids" in msg
  assert "kept.jsonl:1:" not in msg


def test_sample_tokens_are_used_only_when_asked():
  samples = parse_kept_lines([json.dumps(_kept(0, tokens=[5, 6])), json.dumps(_kept(1))])
  assert sft_examples_from_kept(samples)[0].completion_ids is None
  with pytest.raises(KeptDataError, match="has no 'tokens'"):
    sft_examples_from_kept(samples, use_sample_tokens=True)
  assert sft_examples_from_kept(samples[:1], use_sample_tokens=True)[0].completion_ids == (5, 6)
