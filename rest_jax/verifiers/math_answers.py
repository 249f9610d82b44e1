"""Math answers: extraction from a completion, normalisation, and equivalence.

Extraction looks, in the order of `formats`, for
  'gsm8k'        the text after the last `#### ` (GSM8K's answer line),
  'boxed'        the content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces allowed),
  'answer_is'    the last "the (final) answer is X" / "Answer: X",
  'last_number'  the last number in the text (a fallback; drop it for strict grading).
Equivalence first settles the common cases cheaply (same normalised text, plain numbers,
multiple-choice letters, words) and hands the rest to math-verify (sympy) for symbolic
equality: fractions, radicals, pi, intervals, sets, tuples, matrices, expressions.

With `check_work`, the shown work must hold too: every line with an `=` before the answer
line is an integer equation (`+`, `-`, `*`) that is true, and there is at least one. A right
answer reached through `7 + 7 = 11` then fails; the check needs nothing but the completion.
Numbers (integers of any size, decimals, fractions, scientific notation) compare exactly, as
fractions, never through float.

Everything here runs in-process with math-verify's own soft (SIGALRM) timeouts; the hard
deadline that no input can escape is enforced by the worker pool (`pool.py`), which kills
and replaces a worker whose check overruns.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

from rest_jax.verifiers.verdict import Verdict

ALL_FORMATS = ("gsm8k", "boxed", "answer_is", "last_number")
# An "answer" longer than this is not an answer; refusing it bounds the work sympy sees.
MAX_ANSWER_CHARS = 1000


class MathTimeout(Exception):
  """math-verify's own deadline fired while parsing or comparing."""


# ---------------------------------------------------------------- extraction

_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_INLINE_MATH_RE = re.compile(r"\$([^$]+)\$|\\\((.+?)\\\)")


def extract_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces), or None."""
  starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
  for start in reversed(starts[-8:]):  # a bounded number of tries keeps hostile text linear
    rest = text[start:].lstrip()
    if rest.startswith("{"):
      depth = 0
      for i, ch in enumerate(rest):
        if ch == "{":
          depth += 1
        elif ch == "}":
          depth -= 1
          if depth == 0:
            return rest[1:i].strip()
      continue  # unbalanced (truncated generation): try an earlier box
    m = re.match(r"([^\s$]+)", rest)  # `\boxed 5`
    if m:
      return m.group(1)
  return None


def _answer_is(text: str) -> str | None:
  matches = list(_ANSWER_IS_RE.finditer(text))
  if not matches:
    return None
  tail = matches[-1].group(1).strip()
  inline = _INLINE_MATH_RE.search(tail)
  if inline and inline.start() < 3:  # "is $\frac12$." -> the math inside the dollars
    return (inline.group(1) or inline.group(2)).strip()
  tail = re.split(r"\.\s|\.$", tail, maxsplit=1)[0]  # cut at the end of the sentence
  return tail.strip() or None


def _last_number(text: str) -> str | None:
  numbers = _NUMBER_RE.findall(text)
  return numbers[-1].rstrip(",") if numbers else None


_EXTRACTORS = {
    "gsm8k": lambda t: (_GSM8K_RE.findall(t) or [None])[-1],
    "boxed": extract_boxed,
    "answer_is": _answer_is,
    "last_number": _last_number,
}


def extract_answer(text: str, formats=ALL_FORMATS) -> str | None:
  """The answer a completion gives, by the first format in `formats` that finds one."""
  for fmt in formats:
    if fmt not in _EXTRACTORS:
      raise ValueError(f"unknown answer format {fmt!r}; expected one of {ALL_FORMATS}")
    found = _EXTRACTORS[fmt](text)
    if found is not None and found.strip():
      return found.strip()
  return None


def reference_answer(reference: str) -> str:
  """A reference as shipped (GSM8K solution `... #### N`, MATH solution, or bare answer)."""
  if "####" in reference:
    return _GSM8K_RE.findall(reference)[-1].strip()
  if "\\boxed" in reference or "\\fbox" in reference:
    boxed = extract_boxed(reference)
    if boxed is not None:
      return boxed
  return reference.strip()


# ------------------------------------------------------------- normalisation

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = (r"dollars?|cents?|euros?|pounds?|percent|units?|degrees?|cm|mm|km|m|kg|g|"
               r"inches|inch|feet|foot|ft|miles?|hours?|minutes?|seconds?|days?|weeks?|years?")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def normalize_answer(answer: str) -> str:
  """Strips what GSM8K and MATH answers carry that is not the value itself.

  Dollar delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac`, degrees, currency,
  percent signs (a percentage is compared as the number written: "25%" == "25"),
  thousands separators, trailing units and punctuation, and `\\text{}` wrappers.
  """
  s = answer.strip()
  s = re.sub(r"^\\\[|\\\]$|^\\\(|\\\)$", "", s).strip()
  s = s.strip("$").strip()
  s = s.replace("\\displaystyle", "").replace("\\left", "").replace("\\right", "")
  s = re.sub(r"(?<!\\)\\[!,;: ]|~", "", s)  # spacing commands, not the "\\\\" row break
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = re.sub(r"\^\s*\{?\\circ\}?|°|\\circ", "", s)
  s = re.sub(r"\\\$|\$|£|€|\\euro", "", s)
  s = re.sub(r"\\?%", "", s)
  s = s.replace("{,}", "")
  s = re.sub(r"\s+", " ", s).strip()
  whole_text = re.fullmatch(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", s)
  if whole_text:  # \text{(C)}, \text{Monday}
    s = whole_text.group(1).strip()
  # "5 \text{ cm}", "18 dollars": a number followed by unit words is the number.
  s = re.sub(r"^(-?[\d.,]+(?:\\frac\{\d+\}\{\d+\})?)\s*" + _TEXT_CMD_RE.pattern + r"$", r"\1", s)
  s = re.sub(rf"^(-?[\d.,/]+)\s*(?:{_UNIT_WORDS})(?:\^?\d)?\b.*$", r"\1", s, flags=re.IGNORECASE)
  s = re.sub(r"^(-?[\d.,/]+)\s+[A-Za-z]{2,}[A-Za-z ]*$", r"\1", s)  # "5 eggs"; not "2 x"
  s = s.rstrip(".").strip()
  if _THOUSANDS_RE.match(s):
    s = s.replace(",", "")
  choice = re.fullmatch(r"\(?([A-Ea-e])\)", s)  # "(C)" or "C)"
  if choice:
    s = choice.group(1)
  return s


# --------------------------------------------------------------- equivalence

_DECIMAL = r"(?:\d+\.?\d*|\.\d+)"
# Exponents have at most 3 digits so that no answer can make us build a huge integer.
_PLAIN_NUMBER_RE = re.compile(rf"{_DECIMAL}(?:[eE][-+]?\d{{1,3}})?")
# 1.5\times 10^{3}, 1.5 \cdot 10^3, 1.5×10^3, 10^{-2}. An unbraced exponent is one digit, as in
# LaTeX (`10^12` is 10^1 2); other forms go to sympy.
_POWER_OF_TEN_RE = re.compile(rf"(?:({_DECIMAL})\s*(?:\\times|\\cdot|×|·|\*)\s*)?"
                              r"10\s*\^\s*(?:\{\s*([-+]?\d{1,3})\s*\}|(\d))")
_SLASH_FRAC_RE = re.compile(r"(-?\d+)\s*/\s*(\d+)")
_LATEX_FRAC_RE = re.compile(r"\\frac(?:\{(-?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_WORDS_RE = re.compile(r"^[A-Za-z][A-Za-z ]*[A-Za-z]$")


def _as_number(s: str) -> Fraction | None:
  """The exact value of a plain number, a number in scientific notation or a simple fraction,
  else None. Exact, never float: 41 nines are not 1e41, and 1/3 is not 0.3333333333."""
  sign = -1 if s[:1] == "-" else 1
  body = s[1:].lstrip() if s[:1] in "-+" else s
  try:
    if _PLAIN_NUMBER_RE.fullmatch(body):
      return sign * Fraction(body)
    if m := _POWER_OF_TEN_RE.fullmatch(body):
      return sign * Fraction(m[1] or 1) * Fraction(10) ** int(m[2] or m[3])
    if m := _SLASH_FRAC_RE.fullmatch(body):
      num, den = m[1], m[2]
    elif m := _LATEX_FRAC_RE.fullmatch(body):
      num, den = m[1] or m[2], m[3] or m[4]
    else:
      return None
    return sign * Fraction(int(num), int(den)) if int(den) else None
  except ValueError:  # more digits than Python converts (4300): not a plain answer
    return None


_INFINITY = {"\\infty": math.inf, "+\\infty": math.inf, "-\\infty": -math.inf}


def _as_collection(s: str) -> tuple[str, list] | None:
  """('()'|'[)'|...|'set'|'list', elements) for a tuple or interval, a set `\\{..\\}` or a bare
  comma list, when every element is a plain number or an infinity; else None."""
  if s.startswith("\\{") and s.endswith("\\}"):
    kind, body = "set", s[2:-2]
  elif s[:1] in "([" and s[-1:] in ")]":
    kind, body = s[0] + s[-1], s[1:-1]
  elif "," in s:
    kind, body = "list", s
  else:
    return None
  values = []
  for part in body.split(","):
    part = part.strip()
    value = _INFINITY[part] if part in _INFINITY else _as_number(part)
    if value is None:
      return None
    values.append(value)
  return kind, values


def _collections_equal(a: tuple[str, list], b: tuple[str, list]) -> bool | None:
  """Equal, unequal, or None when the kinds differ (math-verify then decides)."""
  (kind_a, xs), (kind_b, ys) = a, b
  if kind_a != kind_b:
    return None
  if kind_a in ("set", "list"):  # MATH lists "all solutions" in any order
    return set(xs) == set(ys)
  return xs == ys


def answers_equal(prediction: str, reference: str, *, timeout_s: float = 3.0) -> bool:
  """Whether two extracted answers denote the same value. Raises MathTimeout on overrun."""
  return _normalized_equal(normalize_answer(prediction), normalize_answer(reference), timeout_s)


# K samples of a prompt often give the same answer: each worker remembers its verdicts.
@functools.lru_cache(maxsize=1 << 16)
def _normalized_equal(pred: str, ref: str, timeout_s: float) -> bool:
  if not pred or not ref:
    return False
  if pred == ref:
    return True
  pred_num, ref_num = _as_number(pred), _as_number(ref)
  if pred_num is not None and ref_num is not None:
    return pred_num == ref_num
  if re.fullmatch(r"[A-E]", ref):  # multiple choice
    return pred.upper() == ref
  if _WORDS_RE.match(ref) and len(ref) > 1:  # a word answer ("even", "Monday")
    return " ".join(pred.lower().split()) == " ".join(ref.lower().split())
  pred_set, ref_set = _as_collection(pred), _as_collection(ref)
  if pred_set is not None and ref_set is not None:
    equal = _collections_equal(pred_set, ref_set)
    if equal is not None:
      return equal
  return _symbolic_equal(pred, ref, timeout_s)


# Points at which expressions in free symbols are compared: both signs, no special values.
_POINTS = ((0.5772156649, -1.2020569032, 2.6854520011),
           (-0.7071067812, 1.6180339887, -2.5029078751))


def _numeric_verdict(gold, guess) -> bool | None:
  """Decides by evaluation where that is safe, else None (math-verify decides).

  Rationals (`10^{41}-1`) are compared exactly; other constant expressions (radicals, pi, ...)
  are equal when they agree to 12 digits; expressions in free symbols are unequal when they
  differ at a point. Decimals are left to math-verify, whose rounding rules apply to them.
  """
  import sympy

  if not (isinstance(gold, sympy.Expr) and isinstance(guess, sympy.Expr)):
    return None
  if gold.has(sympy.Float) or guess.has(sympy.Float):
    return None
  symbols = sorted(gold.free_symbols | guess.free_symbols, key=str)
  if len(symbols) > len(_POINTS[0]):
    return None
  try:
    for point in _POINTS:
      subs = dict(zip(symbols, point))
      a, b = complex(gold.evalf(30, subs=subs)), complex(guess.evalf(30, subs=subs))
      if not (math.isfinite(abs(a)) and math.isfinite(abs(b))):
        return None
      close = abs(a - b) <= 1e-12 * max(1.0, abs(b))
      if not symbols:
        if close and gold.is_rational and guess.is_rational:  # floats cannot tell 10^41-1
          return bool((gold - guess).doit() == 0)           # from 10^41: decide exactly
        return close
      if not close:
        return False
  except (TypeError, ValueError, ArithmeticError):  # not a number (undefined function, ...)
    return None
  return None


def _symbolic_equal(pred: str, ref: str, timeout_s: float) -> bool:
  # Imported here so processes that never compare symbolically do not pay for sympy.
  from math_verify import parse, verify
  from math_verify.errors import TimeoutException
  from math_verify.utils import timeout

  seconds = max(1, math.ceil(timeout_s / 3))  # three alarmed steps: two parses, one verify
  try:
    gold = parse(f"${ref}$", parsing_timeout=seconds, raise_on_error=True)
    guess = parse(f"${pred}$", parsing_timeout=seconds, raise_on_error=True)
    if not gold or not guess:
      return False
    quick = timeout(timeout_seconds=seconds)(_numeric_verdict)(gold[0], guess[0])
    if quick is not None:
      return quick
    return bool(verify(gold, guess, timeout_seconds=seconds, raise_on_error=True))
  except TimeoutException as e:
    raise MathTimeout(f"sympy overran its {seconds}s steps comparing {pred[:60]!r} "
                      f"with {ref[:60]!r}") from e
  except Exception:  # noqa: BLE001 - an expression sympy cannot handle is simply not equal
    return False


_WORK_SIDE_RE = re.compile(r"\s*-?\d{1,30}(?:\s*[-+*]\s*-?\d{1,30}){0,8}\s*")
_WORK_LINE_CHARS = 300


def _int_expr(text: str) -> int | None:
  """The value of an integer expression of at most 9 terms (+, -, * with precedence)."""
  if not _WORK_SIDE_RE.fullmatch(text):
    return None
  # Products first, then sums: the grammar is small enough to do by hand (no eval).
  total, sign = 0, 1
  for term in re.split(r"(?<=\d)\s*([-+])\s*", text.strip()):
    if term in ("+", "-"):
      sign = 1 if term == "+" else -1
      continue
    product = 1
    for factor in term.split("*"):
      product *= int(factor.replace(" ", ""))
    total += sign * product
  return total


def false_work(completion: str) -> str | None:
  """Why the completion's shown work fails (see the module doc), or None when it holds."""
  lines = completion.split("\n")
  work = [ln for ln in lines if "=" in ln and not _GSM8K_RE.search(ln)]
  if not work:
    return "no work shown (expected equations such as '3 + 4 = 7' before the answer)"
  for line in work:
    sides = line.split("=")
    if len(line) > _WORK_LINE_CHARS or len(sides) != 2:
      return f"work line {line.strip()[:60]!r} is not one equation"
    left, right = _int_expr(sides[0]), _int_expr(sides[1])
    if left is None or right is None:
      return f"work line {line.strip()[:60]!r} is not an integer equation"
    if left != right:
      return f"work line {line.strip()[:60]!r} is false"
  return None


def check_math(completion: str, reference: str, *, formats=ALL_FORMATS,
               timeout_s: float = 3.0, check_work: bool = False) -> Verdict:
  """Extracts the completion's answer and compares it with the reference, in-process."""
  if not isinstance(completion, str) or not isinstance(reference, str):
    return Verdict("error", None, "math item needs a string 'completion' and a string 'answer', "
                   f"got {type(completion).__name__} and {type(reference).__name__}")
  ref = reference_answer(reference)
  if not ref:
    return Verdict("error", None, "reference answer is empty")
  extracted = extract_answer(completion, formats)
  if extracted is None:
    return Verdict("fail", None, f"no answer found (looked for {', '.join(formats)})")
  if len(extracted) > MAX_ANSWER_CHARS:
    return Verdict("fail", extracted[:100],
                   f"extracted answer longer than {MAX_ANSWER_CHARS} chars")
  try:
    equal = answers_equal(extracted, ref, timeout_s=timeout_s)
  except MathTimeout as e:
    return Verdict("timeout", extracted, str(e))
  if equal and check_work:
    wrong = false_work(completion)
    if wrong is not None:
      return Verdict("fail", extracted, f"answer equal to reference, but {wrong}")
  if equal:
    return Verdict("pass", extracted, "equal to reference")
  return Verdict("fail", extracted, f"{extracted[:80]!r} is not equal to reference {ref[:80]!r}")
