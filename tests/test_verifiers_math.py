"""Math verifier: a labelled table of GSM8K/MATH answer pairs, extraction, the shipped data
sets against themselves, and the hard deadline."""

import time

import pytest

from rest_jax.verifiers import (Verdict, VerifierPool, answers_equal, check_math, extract_answer,
                                reference_answer, verify_math)
from rest_jax.verifiers.math_answers import extract_boxed
from verifier_data import gsm8k_test, math500

T, F = True, False

# (prediction, reference, equal?) as GSM8K and MATH write them.
GSM8K_PAIRS = [
    ("18", "18", T), ("18.00", "18", T), ("18.0", "18", T), ("$18", "18", T), ("\\$18", "18", T),
    ("18 dollars", "18", T), ("$18.50", "18.5", T), ("2.50", "2.5", T), ("1200", "1,200", T),
    ("1,000", "1000", T), ("1,000,000", "1000000", T), ("999,999", "999999", T),
    ("$1,234.56", "1234.56", T), ("25%", "25", T), ("25 percent", "25", T), ("12.5%", "12.5", T),
    ("5 eggs", "5", T), ("45 minutes", "45", T), ("7 days", "7", T), ("5 hours", "5", T),
    ("0.5", ".5", T), ("1e3", "1000", T), ("1.2e-3", "0.0012", T), ("1.5", "3/2", T),
    ("-3", "-3", T), ("17", "18", F), ("-3", "3", F), ("3", "-3", F), ("18.01", "18", F),
    ("10", "100", F), ("180", "18", F), ("0.25", "25", F), ("1,001", "1000", F),
    ("19 dollars", "18", F), ("2.51", "2.5", F), ("", "18", F),
]

MATH_PAIRS = [
    # fractions and decimals
    ("\\frac{1}{2}", "\\frac12", T), ("\\dfrac{1}{2}", "\\frac{1}{2}", T), ("\\tfrac{1}{2}", "0.5", T),
    ("1/2", "\\frac{1}{2}", T), ("\\frac{2}{4}", "\\frac{1}{2}", T), ("-\\frac{1}{2}", "\\frac{-1}{2}", T),
    ("\\frac{-1}{2}", "-0.5", T), ("0.1", "\\frac{1}{10}", T), ("0.333333", "\\frac13", F),
    ("\\frac{1}{3}", "0.333", F), ("0.33", "\\frac{1}{3}", F), ("\\frac{1}{3}", "\\frac{1}{2}", F),
    ("\\frac{3}{4}", "\\frac{4}{3}", F),
    # radicals
    ("2\\sqrt{2}", "\\sqrt{8}", T), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", T),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", T), ("3\\sqrt{2}", "\\sqrt{18}", T),
    ("\\sqrt[3]{8}", "2", T), ("-16+8\\sqrt5", "8\\sqrt{5} - 16", T),
    ("2(\\sqrt{2}-1)", "2\\sqrt{2}-2", T), ("\\sqrt{3}", "\\sqrt{2}", F), ("\\sqrt{8}", "8", F),
    ("\\frac{\\sqrt{6}}{4}", "\\frac{\\sqrt{7}}{4}", F),
    # pi and angles
    ("2\\pi", "2\\pi", T), ("4 \\pi", "4\\pi", T), ("\\pi/2", "\\frac{\\pi}{2}", T),
    ("r^2\\pi", "\\pi r^2", T), ("3.14159", "\\pi", F), ("\\frac{\\pi}{4}", "\\frac{\\pi}{3}", F),
    ("90^\\circ", "90", T), ("30^{\\circ}", "30^\\circ", T), ("45", "30^\\circ", F),
    # intervals
    ("[-0.25,0)\\cup(0,2)", "[-\\frac{1}{4}, 0) \\cup (0, 2)", T),
    ("(-\\infty,-1)\\cup(6,\\infty)", "(-\\infty,-1)\\cup(6,+\\infty)", T),
    ("[1, 2]", "[1,2]", T), ("(0,\\infty)", "(0, \\infty)", T), ("(1,2)", "(1,2]", F),
    ("(-\\infty, 3]", "(-\\infty, 3)", F), ("[2,5]", "[2,6]", F),
    # sets and tuples
    ("\\{3,2,1\\}", "\\{1,2,3\\}", T), ("\\{1,2\\}", "\\{1,2,3\\}", F), ("(1, 2)", "(1,2)", T),
    ("(3,-1)", "(3, -1)", T), ("(2,1)", "(1,2)", F), ("(1,2,4)", "(1,2,3)", F),
    ("3, 2, 1", "1, 2, 3", T), ("1, 2", "1, 2, 3", F),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", T),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", T),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
    ("\\begin{bmatrix}1\\\\2\\end{bmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", T),
    ("\\begin{pmatrix} 1/2 \\\\ 0 \\end{pmatrix}", "\\begin{pmatrix} 0.5 \\\\ 0 \\end{pmatrix}", T),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", F),
    # expressions and equations
    ("x^2+2x+1", "(x+1)^2", T), ("3+2x", "2x+3", T), ("0.5x", "\\frac{x}{2}", T),
    ("(x-1)(x+1)", "x^2-1", T), ("b+a", "a+b", T), ("a+a", "2a", T), ("x^2+1", "(x+1)^2", F),
    ("x^2", "x^3", F), ("\\frac{x-1}{x+1}", "\\frac{x+1}{x-1}", F), ("x=3", "3", T),
    ("x = 3", "x=3", T), ("x=4", "3", F), ("y = 2x - 1", "y=2x-1", T), ("10^{2^n-n-1}", "10^{2^n-n-1}", T),
    ("1+2i", "2i+1", T), ("1-2i", "1+2i", F),
    # numbers written the MATH way
    ("10{,}000", "10000", T), ("10,\\!000", "10000", T), ("10,000", "10000", T),
    ("1.5\\times 10^3", "1500", T), ("1.5 \\cdot 10^{3}", "1500", T), ("3 \\times 10^{-2}", "0.03", T),
    ("2\\times 10^3", "20000", F), ("10\\%", "10", T), ("5\\text{ cm}", "5", T), ("5 \\mbox{ cm}", "5", T),
    ("12\\text{ inches}", "12", T), ("5\\text{ cm}^2", "5", T), ("6\\text{ cm}", "5", F),
    ("\\infty", "\\infty", T), ("-\\infty", "\\infty", F), ("- 5", "-5", T), ("1011_2", "1011_2", T),
    # multiple choice and words
    ("(C)", "C", T), ("\\text{(C)}", "C", T), ("C", "\\text{(C)}", T), ("c", "C", T),
    ("\\textbf{(A)}", "A", T), ("B", "C", F), ("(D)", "\\text{(E)}", F), ("\\text{even}", "\\text{even}", T),
    ("even", "\\text{odd}", F), ("\\text{Monday}", "Monday", T), ("Tuesday", "\\text{Monday}", F),
    ("Yes", "yes", T), ("no", "yes", F),
]


@pytest.mark.parametrize("prediction,reference,equal", GSM8K_PAIRS + MATH_PAIRS)
def test_answer_pairs(prediction, reference, equal):
  assert answers_equal(prediction, reference) is equal


NINES_41 = "9" * 41  # 10^41 - 1, which a float cannot tell from 1e41

# Numbers compare exactly: every written form of a value, and near-misses in the last digit.
EXACT_NUMBER_PAIRS = [
    # integers of any size
    (NINES_41, "1e41", F), ("1" + "0" * 41, "1e41", T), (NINES_41, "9" * 40 + "8", F),
    (f"{10**41 - 1:,}", NINES_41, T), (str(10**41), "10^{41}", T), (str(10**41 + 1), "10^{41}", F),
    ("10^{41}-1", NINES_41, T), ("10^{41}-1", "10^{41}", F), ("-" + NINES_41, NINES_41, F),
    # decimals and fractions
    ("0.5", "1/2", T), ("0.5", "\\frac{1}{2}", T), ("1,000", "1000", T),
    ("1/3", "0.3333333333", F), ("\\frac{1}{3}", "0.3333333333", F), ("0.3333333333", "1/3", F),
    ("1.0000000000000001", "1", F), ("1.00000000000000000000", "1", T),
    ("0.30000000000000004", "0.3", F), ("3 \\times 10^{-1}", "0.3", T),
    ("1.1 \\times 10^{1}", "11", T),
    ("0.1", "1/10", T), ("0.7", "\\frac{7}{10}", T), ("0.70000001", "\\frac{7}{10}", F),
    # scientific notation in its usual written forms
    ("1e3", "1000", T), ("1E+3", "1000", T), ("1×10^3", "1000", T),
    ("1 \\times 10^{3}", "1000", T), ("1\\cdot 10^{3}", "1000", T), ("10^{3}", "1000", T),
    ("10^3", "1e3", T), ("1e41", "10^{41}", T),
    ("1.5e-3", "0.0015", T), ("1.5e-3", "1.5 \\times 10^{-3}", T), ("2.5 \\times 10^{2}", "250", T),
    ("-2.5 \\times 10^{2}", "-250", T), ("1.5 · 10^{+3}", "1500", T),
    ("1e3", "1001", F), ("1E+3", "999", F), ("1×10^3", "1001", F),
    ("1 \\times 10^{3}", "10^{4}", F),
    ("1.5e-3", "0.0016", F), ("2.5 \\times 10^{2}", "251", F), ("-2.5 \\times 10^{2}", "250", F),
    ("1.0000000000000001e3", "1000", F),
    # inside tuples and sets
    ("(1 \\times 10^{3}, 0.5)", "(1000, \\frac{1}{2})", T), ("\\{1e3, 2\\}", "\\{2, 1001\\}", F),
    (f"({NINES_41}, 1)", "(1e41, 1)", F),
]


@pytest.mark.parametrize("prediction,reference,equal", EXACT_NUMBER_PAIRS)
def test_numbers_compare_exactly(prediction, reference, equal):
  assert answers_equal(prediction, reference) is equal
  assert answers_equal(reference, prediction) is equal  # symmetric


def test_exact_numbers_through_extraction():
  assert check_math(f"So the total is\n#### {NINES_41}", "1e41").verdict == "fail"
  assert check_math("The answer is $1.5 \\times 10^{-3}$.", "0.0015").verdict == "pass"
  assert check_math("Thus \\boxed{2.5 \\times 10^{2}}.", "251").verdict == "fail"


def test_the_table_is_large_and_balanced():
  pairs = GSM8K_PAIRS + MATH_PAIRS
  assert len(pairs) >= 100
  assert sum(e for *_, e in pairs) > 40 and sum(not e for *_, e in pairs) > 30


# (completion, reference, pass?) through extraction.
COMPLETIONS = [
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "Janet sells 9 eggs.\n#### 18", T),
    ("So she earns 18 dollars.\n#### 17", "#### 18", F),
    ("Adding them up, the answer is 18.", "18", T),
    ("The answer is $\\frac{3}{4}$. Let me double check: 3/4 = 0.75.", "0.75", T),
    ("The answer is: 1,080", "1080", T),
    ("Final Answer: The final answer is $7$. I hope it is correct.", "7", T),
    ("So we get \\boxed{\\frac{\\sqrt{2}}{2}}.", "\\frac{1}{\\sqrt{2}}", T),
    ("Hence $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)", T),
    ("First \\boxed{1}, then corrected: \\boxed{2}", "2", T),
    ("\\fbox{42}", "42", T),
    ("It is 5, or rather 7", "7", T),
    ("I have no idea.", "7", F),
    ("The total cost is $1,234.50 in all.", "1234.5", T),
]


@pytest.mark.parametrize("completion,reference,passes", COMPLETIONS)
def test_completions(completion, reference, passes):
  verdict = check_math(completion, reference)
  assert verdict.passed is passes, verdict


def test_a_truncated_box_is_no_answer():
  strict = ("gsm8k", "boxed", "answer_is")  # without the last-number fallback
  assert check_math("\\boxed{5", "5", formats=strict).verdict == "fail"
  assert check_math("\\boxed{5", "5").verdict == "pass"  # the fallback finds the 5


def test_extraction_formats():
  assert extract_boxed("x \\boxed{\\frac{a}{\\sqrt{b^{2}}}} y") == "\\frac{a}{\\sqrt{b^{2}}}"
  assert extract_boxed("\\boxed 5$") == "5"
  assert extract_boxed("no box") is None
  text = "Answer: 3\n#### 4\n\\boxed{5}"
  assert extract_answer(text) == "4"
  assert extract_answer(text, ("boxed", "gsm8k")) == "5"
  assert extract_answer("the value 12 then 13", ("boxed",)) is None
  assert extract_answer("the value 12 then 13") == "13"
  assert reference_answer("Solution... so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert reference_answer("Work.\n#### 1,000") == "1,000"
  with pytest.raises(ValueError, match="unknown answer format 'latex'"):
    extract_answer("x", ("latex",))


def test_verdict_fields():
  verdict = check_math("#### 5", "5")
  assert (verdict.verdict, verdict.extracted, verdict.reward) == ("pass", "5", 1.0)
  missing = check_math("nothing", "5", formats=("boxed",))
  assert missing.verdict == "fail" and missing.reward == 0.0 and "boxed" in missing.reason
  assert check_math("#### 5", "").verdict == "error"
  assert check_math(None, "5").verdict == "error"
  assert Verdict("timeout").reward == 0.0
  with pytest.raises(ValueError):
    Verdict("maybe")


def _perturb(answer: str) -> str:
  answer = answer.strip().strip("$")
  try:
    return str(int(answer.replace(",", "")) + 1)
  except ValueError:
    return answer + "+1"


def test_shipped_references_equal_themselves_and_not_a_perturbed_copy():
  gsm8k, math = gsm8k_test(), math500()
  assert (len(gsm8k), len(math)) == (1319, 311)
  items, expected = [], []
  for row in gsm8k:  # the human solution itself is the completion: "... #### N"
    answer = reference_answer(row["answer"])
    items += [{"completion": row["answer"], "answer": row["answer"]},
              {"completion": row["answer"], "answer": _perturb(answer)}]
    expected += ["pass", "fail"]
  for row in math:
    items += [{"completion": f"So the answer is $\\boxed{{{row['answer']}}}$.", "answer": row["answer"]},
              {"completion": f"Thus \\boxed{{{_perturb(row['answer'])}}}.", "answer": row["answer"]}]
    expected += ["pass", "fail"]
  with VerifierPool(2) as pool:
    verdicts = pool.verify(items)
  wrong = [(item, v) for item, v, e in zip(items, verdicts, expected) if v.verdict != e]
  assert not wrong, wrong[:5]


def test_hard_deadline_kills_and_replaces_the_worker():
  # The factorial of ten million keeps sympy busy; math-verify's own alarms are whole seconds,
  # so the pool's hard deadline (0.3 + 0.2 s) comes first and kills the worker.
  items = [{"completion": "\\boxed{2}", "answer": "2"},
           {"completion": "\\boxed{(10^{7})!}", "answer": "1"},
           {"completion": "#### 3", "answer": "3"},
           {"completion": "#### 4", "answer": "5"}]
  with VerifierPool(1, math_timeout_s=0.3, grace_s=0.2) as pool:
    list(pool.map(items[:1]))  # started and warm
    start = time.monotonic()
    verdicts = pool.verify(items)
    elapsed = time.monotonic() - start
    restarts = pool.stats.restarts
  assert [v.verdict for v in verdicts] == ["pass", "timeout", "pass", "fail"]
  assert "hard deadline" in verdicts[1].reason and restarts == 1
  assert elapsed < 0.5 + 15.0  # the kill at 0.5 s, then a fresh worker's start-up


def test_verify_math_single_call():
  assert verify_math("The answer is $\\frac{1}{2}$.", "0.5").verdict == "pass"
  assert verify_math("#### 17", "#### 18").verdict == "fail"


@pytest.mark.parametrize("completion,verdict,reason", [
    ("3 + 4 = 7\n7 + 8 = 15\n#### 15", "pass", "equal to reference"),
    ("3 + 4 = 6\n6 + 9 = 15\n#### 15", "fail", "'3 + 4 = 6' is false"),       # right answer
    ("3 + 4 = 7\n\n13 + = 10\n#### 15", "fail", "is not an integer equation"),
    ("#### 15", "fail", "no work shown"),
    ("2 * 3 + 9 = 15\n#### 15", "pass", "equal to reference"),                 # precedence
    ("15 - 20 = -5\n-5 + 20 = 15\n#### 15", "pass", "equal to reference"),
    ("3 + 4 = 7 = 7\n#### 15", "fail", "is not one equation"),
    ("3 + 4 = 7\n7 + 7 = 14\n#### 14", "fail", "not equal to reference"),      # true, wrong answer
])
def test_check_work_needs_true_equations(completion, verdict, reason):
  got = check_math(completion, "15", check_work=True)
  assert (got.verdict, got.extracted is not None) == (verdict, True)
  assert reason in got.reason
  # Without the option only the final answer counts.
  assert check_math(completion, "15").verdict == (
      "fail" if "not equal" in reason else "pass")


def test_check_work_goes_through_the_pool():
  items = [{"completion": "3 + 4 = 6\n#### 7", "answer": "7", "check_work": True},
           {"completion": "3 + 4 = 6\n#### 7", "answer": "7"},
           {"completion": "9" * 40 + " * 2 = 1\n#### 7", "answer": "7", "check_work": True}]
  with VerifierPool(1) as pool:
    verdicts = pool.verify(items)
  assert [v.verdict for v in verdicts] == ["fail", "pass", "fail"]
  assert "is false" in verdicts[0].reason and "not an integer equation" in verdicts[2].reason
