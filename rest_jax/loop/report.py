"""`report.md` and `report.png`: accuracy per iteration beside the base and the SFT baseline."""

from __future__ import annotations

from typing import Mapping, Sequence

from etils import epath

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


def markdown(rows: Sequence[Mapping], title: str, ks: Sequence[int],
             method: str = "ReST-EM") -> str:
  """One table row per stage: base, SFT on human data, then each ReST-EM iteration."""
  kcols = [k for k in ks if k > 1]
  head = (["stage", "kept", "solved (train)", "held-out greedy", "held-out pass@1 [95% CI]"]
          + [f"held-out pass@{k}" for k in kcols] + [f"held-out maj@{k}" for k in kcols]
          + ["train pass@1", "time (s)"])
  lines = [f"# {title}", "", "Accuracies in %; pass@1 is the mean over sampled completions, "
           "greedy is temperature 0; intervals are bootstrap 95% over prompts.", "",
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
    cells += [_fmt(_metric(m, "train", "pass@1")),
              " + ".join(f"{k} {v:.0f}" for k, v in times.items()) or "–"]
    lines.append("| " + " | ".join(cells) + " |")
  best = [r for r in rows if r.get("best")]
  if best:
    lines += ["", f"Best {method} iteration by held-out pass@1: **{best[0]['stage']}**."]
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
  tmp = epath.Path(path).parent / ".report.png.tmp"
  with tmp.open("wb") as f:
    fig.savefig(f, format="png")
  tmp.replace(path)
  plt.close(fig)


def write(workdir, rows: Sequence[Mapping], title: str, ks: Sequence[int]) -> None:
  root = epath.Path(workdir)
  workdir_lib.write_text(root / "report.md", markdown(rows, title, ks))
  plot(rows, root / "report.png")
