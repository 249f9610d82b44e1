"""`rest-jax tasks` (list tasks with split sizes) and `rest-jax tasks show NAME` (prompts).

cli.py parses gin and arguments, then calls these; they print to `out` and return an exit
code. Tasks are built with get_task, so gin bindings (prompt format, task knobs) apply.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from rest_jax.tasks import base


def list_tasks_main(out: TextIO | None = None) -> int:
  """Prints every registered task: name, verifier, split sizes, source."""
  out = out or sys.stdout
  rows = [("task", "verifier", "splits", "prompt", "source")]
  for name in base.task_names():
    try:
      task = base.get_task(name)
    except (ValueError, base.TaskDataError) as e:
      # jsonl without a file, a data package missing: say why instead of hiding the task.
      rows.append((name, "-", "-", "-", f"unavailable: {str(e).splitlines()[0]}"))
      continue
    sizes = ", ".join(f"{s}={task.num_problems(s)}" for s in task.splits)
    fmt = task.prompt_format
    rows.append((name, task.verifier, sizes, f"{fmt.style}, {fmt.num_shots}-shot", task.source))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  for r in rows:
    cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
    out.write("  ".join(cells).rstrip() + "\n")
  return 0


def show_task_main(name: str, n: int = 3, split: str = base.TRAIN, out: TextIO | None = None,
                   tokenizer=None, err: TextIO | None = None) -> int:
  """Prints the first `n` problems of a split: id, the exact prompt, reference, solution.

  A task that cannot be built (unknown, misconfigured, malformed data: each bad line with its
  number) is reported on `err` (stderr) with exit status 2.
  """
  out = out or sys.stdout
  if name not in base.task_names():
    message = f"unknown task {name!r}; registered tasks: {base.task_names()}"
  else:
    try:
      task = base.get_task(name, tokenizer=tokenizer)
      problems = task.problems(split)
      message = None
    except (ValueError, base.TaskDataError) as e:
      # gin appends "In call to configurable ..." to what passes through a configurable.
      message = "\n".join(line for line in str(e).splitlines()
                          if not line.lstrip().startswith("In call to configurable"))
  if message is not None:
    (err or sys.stderr).write(f"rest-jax tasks show: {message}\n")
    return 2
  out.write(f"{task!r}: {len(problems)} problems in split {split!r}\n")
  for p in problems[:n]:
    out.write(f"\n=== {p.id} ===\n--- prompt ---\n{p.prompt}\n")
    ref = p.reference if isinstance(p.reference, str) else json.dumps(p.reference, indent=1)
    out.write(f"--- reference ({p.verifier}) ---\n{ref}\n")
    if p.solution is not None:
      out.write(f"--- human solution (completion) ---\n{p.solution}\n")
  return 0
