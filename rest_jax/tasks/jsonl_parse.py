"""Reading JSON-lines input that users write: every bad line is reported, not just the first.

    errors = []
    for lineno, obj in json_objects(lines, source, errors):
      ...  # check obj; on a problem, errors.append(f"{source}:{lineno}: what is wrong")
    raise_if_errors(errors, MyDataError, "line(s)")
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

MAX_REPORTED_ERRORS = 20


def json_objects(lines: Iterable[str], source: str, errors: list[str],
                 hint: str = "") -> Iterator[tuple[int, Any]]:
  """(line number, parsed value) of each non-blank line; lines that are not JSON go to
  `errors` as ``source:line: not valid JSON (...)`` followed by `hint`."""
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue  # blank lines (a trailing newline) carry nothing
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      errors.append(f"{source}:{lineno}: not valid JSON ({e.msg} at column {e.colno}){hint}")
      continue
    yield lineno, obj


def raise_if_errors(errors: list[str], error_cls: type[Exception], what: str) -> None:
  """Raises `error_cls("N malformed <what>:" + the first errors, one a line)` if any."""
  if not errors:
    return
  more = len(errors) - MAX_REPORTED_ERRORS
  shown = errors[:MAX_REPORTED_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
  raise error_cls(f"{len(errors)} malformed {what}:\n" + "\n".join(shown))
