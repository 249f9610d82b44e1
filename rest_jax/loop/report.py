"""`report.md` and `report.png`: accuracy per iteration beside the base and the SFT baseline."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from etils import epath

from rest_jax.runtime import storage
from rest_jax.runtime import workdir as workdir_lib


def _fmt(v, ci=None) -> str:
  if v is None:
    return "–"
  s = f"{100 * v:.1f}"
  if ci:
    s += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
  return s


def _metric(m: Mapping, split: str, key: str):
  return (m.get(split) or {}).get(key)


def _diff(d: Mapping) -> str:
  lo, hi = d["ci95"]
  return f"{100 * d['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def verdict_line(cmp: Mapping, method: str = "ReST-EM") -> str:
  """One line: the best iteration (picked on validation) against the base and the SFT
  baseline in test pass@1, each difference with its paired bootstrap 95% interval."""
  parts = []
  for key, label in (("vs_base", "the base"), ("vs_sft_human", "SFT on the human solutions")):
    if key in cmp:
      parts.append(f"{_diff(cmp[key])} over {label}"
                   + ("" if cmp[key]["excludes_zero"] else " (interval includes 0)"))
  head = (f"**Verdict: {method} gains.**" if cmp.get("gain")
          else f"**Verdict: no gain shown by {method}.**")
  return (f"{head} Best iteration by {cmp['selected_by'].replace('val ', 'validation ')}: "
          f"iter_{cmp['best_iteration']:03d}; its test pass@1 is " + "; ".join(parts)
          + f" (paired bootstrap 95% intervals over the same {cmp['test_prompts']} test "
          "prompts and draws).")


def markdown(rows: Sequence[Mapping], title: str, ks: Sequence[int],
             method: str = "ReST-EM", verdict: str | None = None) -> str:
  """One table row per stage: base, SFT on human data, then each ReST-EM iteration; the
  verdict line (`verdict_line`) above the table when given."""
  kcols = [k for k in ks if k > 1]
  has_val = any("val" in (r.get("metrics") or {}) for r in rows)
  head = (["stage", "kept", "solved (train)", "held-out greedy", "held-out pass@1 [95% CI]"]
          + [f"held-out pass@{k}" for k in kcols] + [f"held-out maj@{k}" for k in kcols]
          + (["val pass@1"] if has_val else []) + ["train pass@1", "time (s)"])
  lines = [f"# {title}", ""] + ([verdict, ""] if verdict else []) + [
      "Accuracies in %; held-out is the test split (reported only, never used to select); "
      "val is the validation split (training problems never sampled for training), which "
      "picks the best iteration; train is training prompts without a human solution. pass@1 "
      "is the mean over sampled completions, greedy is temperature 0; intervals are bootstrap "
      "95% over prompts.", "",
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    m = r.get("metrics", {})
    counts = r.get("counts") or {}
    times = r.get("times") or {}
    cells = [r["stage"], str(counts.get("kept", "–")), str(counts.get("prompts_solved", "–")),
             _fmt(_metric(m, "heldout", "greedy_pass@1")),
             _fmt(_metric(m, "heldout", "pass@1"), _metric(m, "heldout", "pass@1_ci95"))]
    cells += [_fmt(_metric(m, "heldout", f"pass@{k}")) for k in kcols]
    cells += [_fmt(_metric(m, "heldout", f"maj@{k}")) for k in kcols]
    cells += [_fmt(_metric(m, "val", "pass@1"))] if has_val else []
    cells += [_fmt(_metric(m, "train", "pass@1")),
              " + ".join(f"{k} {v:.0f}" for k, v in times.items()) or "–"]
    lines.append("| " + " | ".join(cells) + " |")
  best = [r for r in rows if r.get("best")]
  if best:
    by = "validation" if "val" in best[0].get("metrics", {}) else "train"
    lines += ["", f"Best {method} iteration by {by} pass@1: **{best[0]['stage']}**."]
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping], path, method: str = "ReST-EM") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  iters = [r for r in rows if r["stage"].startswith("iter_")]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  xs = [int(r["stage"].split("_")[1]) for r in iters]
  for key, label, style in (("pass@1", "held-out pass@1", "o-"),
                            ("greedy_pass@1", "held-out greedy", "s--")):
    ys = [_metric(r["metrics"], "heldout", key) for r in iters]
    if xs and all(y is not None for y in ys):
      ax.plot(xs, [100 * y for y in ys], style, label=f"{method} {label}")
  for r, color in zip([r for r in rows if not r["stage"].startswith("iter_")], ("gray", "C3")):
    y = _metric(r["metrics"], "heldout", "pass@1")
    if y is not None:
      ax.axhline(100 * y, color=color, linestyle=":", label=f"{r['stage']} pass@1")
  ax.set_xlabel(f"{method} iteration")
  ax.set_ylabel("accuracy (%)")
  if xs:
    ax.set_xticks(xs)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  storage.write_bytes(path, buf.getvalue())


def write(workdir, rows: Sequence[Mapping], title: str, ks: Sequence[int],
          verdict: str | None = None) -> None:
  root = epath.Path(workdir)
  workdir_lib.write_text(root / "report.md", markdown(rows, title, ks, verdict=verdict))
  plot(rows, root / "report.png")
