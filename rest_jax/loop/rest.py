"""The original ReST (Gulcehre et al. 2023) as a resumable loop: Grow, then I Improve steps.

For Grow g = 1..G:

  grow_GGG      the current policy samples K completions per training prompt (verified on the
                way: the verifier's reward stays on every row, for the report), then the
                reward source scores them (grow_GGG/scores.jsonl)
  reward_model  (after Grow 1, when no checkpoint is given) train the reward model on Grow 1's
                verifier labels: an outcome reward model
  iter_TTT      Improve step s = 1..I (T counts Improve steps over all Grows): keep the samples
                scoring at least tau_s (rising), fine-tune warm-started from the previous
                step's policy (BC or reward-weighted loss), evaluate (pass@1, pass@k, maj@k
                and best-of-N by the reward model on held-out prompts)

Each step is marked done in `state.json` once its outputs are on disk, exactly like
`loop.Loop` (whose helpers this class reuses), so a killed run resumes where it was.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import gin
import numpy as np

from rest_jax.runtime import distributed as dist
from rest_jax.loop import rest_em as loop_lib
from rest_jax.loop import report
from rest_jax.loop import rest_schedule
from rest_jax.loop import summary
from rest_jax.rewards import model as reward_model
from rest_jax.rewards import training as reward_training
from rest_jax.rewards import sources as rewards
from rest_jax.rewards import metrics as rm_metrics
from rest_jax.runtime import workdir as workdir_lib
from rest_jax.tasks.kept import sft_examples_from_kept

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ReSTConfig:
  """Settings of the original ReST (`LoopConfig.mode = 'rest'`).

  grows: G, the number of Grow steps (the paper: 1 to 3). The Grow sample size is
    `LoopConfig.num_samples` per training prompt; `LoopConfig.iterations` is not used.
  improve_steps: I, Improve steps per Grow, each warm-starting from the previous one.
  thresholds: one per Improve step, non-decreasing: scores (`absolute`) or per-prompt
    quantiles of the Grow's scores (`quantile`).
  min_score: a floor under every threshold (None: none).
  dedupe: drop a prompt's repeated completions before the `max_per_prompt` cap. Off by
    default: with a learned reward, a completion the policy repeats is more often right (its
    correct work agrees, its errors differ), so de-duplicating leaves the kept set mostly
    wrong work (RESULTS.md: 42% against 65% verifier-correct at the same threshold).
  loss: 'bc' (behaviour cloning on the kept samples) or 'reward_weighted'.
  reward: 'reward_model', 'verifier', or a graded score 'package.module:function', called as
    function(problem, completion) -> float (see rewards/sources.py; built in:
    'rest_jax.rewards.graded:fraction_of_tests_passed' for code tasks).
  reward_model: a reward model checkpoint (`rest-jax train-rm`); None trains one on Grow 1's
    verifier labels (`RewardTrainConfig` sets its budget).
  include_human: the Grow dataset also holds the human solutions of the training prompts
    (`LoopConfig.num_human_solutions` of them), scored and filtered like the samples: the
    paper's D_g = samples ∪ D (Gulcehre et al. 2023, Algorithm 1). The reward model is
    trained on the samples alone; kept-set counts give the samples' verifier accuracy.
  best_of_n: evaluate best-of-k by the reward (k in LoopConfig.eval_ks) on the held-out
    samples, beside pass@k and maj@k.
  """

  grows: int = 1
  improve_steps: int = 3
  thresholds: tuple[float, ...] = (0.0, 0.5, 0.75)
  threshold_mode: str = "quantile"
  min_score: float | None = None
  dedupe: bool = False
  loss: str = "bc"
  reward: str = "reward_model"
  reward_model: str | None = None
  include_human: bool = True
  best_of_n: bool = True
  score_batch_size: int = 64


class ReSTLoop(loop_lib.Loop):
  method = "ReST"

  def __init__(self, cfg: loop_lib.LoopConfig, mesh, rest: ReSTConfig | None = None):
    if cfg.mode != "rest":
      raise loop_lib.RunSettingError(f"ReSTLoop needs LoopConfig.mode='rest', got {cfg.mode!r}")
    if cfg.adaptive_rounds:
      raise loop_lib.RunSettingError(
          f"LoopConfig.adaptive_rounds={cfg.adaptive_rounds} is for mode='rest_em': ReST's "
          "Grow draws num_samples per prompt; set it to 0")
    if dist.process_count() > 1:
      raise loop_lib.RunSettingError(
          "LoopConfig.mode='rest' runs on one process: the reward model is trained and applied "
          "on one host. Run it with one process, or use mode='rest_em' on a pod")
    # Loop validates its own modes; the ReST driver is this class's run().
    super().__init__(dataclasses.replace(cfg, mode="rest_em"), mesh)
    self.cfg = cfg
    self.rest = rest or ReSTConfig()
    try:
      self.thresholds = rest_schedule.check_schedule(
          self.rest.thresholds, self.rest.threshold_mode, self.rest.improve_steps)
    except ValueError as e:
      raise loop_lib.RunSettingError(str(e)) from e
    if self.rest.loss not in rest_schedule.LOSSES:
      raise loop_lib.RunSettingError(f"ReSTConfig.loss={self.rest.loss!r}: expected one of "
                                     f"{rest_schedule.LOSSES}")
    if self.rest.grows < 1 or self.rest.improve_steps < 1:
      raise loop_lib.RunSettingError("ReSTConfig.grows and ReSTConfig.improve_steps must be >= 1")
    if rewards.needs_reward_model(self.rest.reward) and not self.rest.reward_model:
      try:   # the reward model is trained after the Grow: refuse a bad setting before it
        reward_training.check(reward_training.RewardTrainConfig())
      except ValueError as e:
        raise loop_lib.RunSettingError(str(e)) from e
    self.source = None        # the reward source, once ready
    self.rm_stats: dict = {}

  @property
  def num_steps(self) -> int:
    return self.rest.grows * self.rest.improve_steps

  # --- the reward ----------------------------------------------------------------------

  def _reward_model_dir(self):
    return self.wd.checkpoints / "reward_model"

  def _prepare_source(self, grow1_rows=None) -> bool:
    """Sets `self.source`; returns False while it still needs Grow 1's labels."""
    r = self.rest
    if self.source is not None:
      return True
    if not rewards.needs_reward_model(r.reward):
      self.source = rewards.make_reward_source(
          r.reward, problems={p.id: p for p in self.train_problems()})
      return True
    stats_path = self.wd.root / "reward_model" / "metrics.json"
    if r.reward_model:
      rm = reward_model.load(r.reward_model, self.mesh)
      self.rm_stats = {"source": r.reward_model, **rm.meta.get("trained", {})}
    elif self.state.is_done("reward_model/train"):
      rm = reward_model.load(self._reward_model_dir(), self.mesh)
      self.rm_stats = workdir_lib.read_json(stats_path)
    elif grow1_rows is None:
      return False
    else:
      rm, self.rm_stats = self._train_reward_model(grow1_rows)
      if self.is_writer:
        workdir_lib.write_json(stats_path, self.rm_stats)
      self._mark("reward_model/train")
    self.source = rewards.make_reward_source(
        "reward_model", scorer=reward_model.RewardScorer(rm, self.mesh,
                                                         batch_size=r.score_batch_size))
    return True

  def _train_reward_model(self, rows):
    """An outcome reward model on Grow 1's verifier labels, its backbone from the base."""
    tcfg = reward_training.RewardTrainConfig()
    tcfg = dataclasses.replace(tcfg, seed=tcfg.seed + self.cfg.seed)
    rm0 = reward_model.from_policy(self.model.graphdef, self.base_params, self.model.config,
                                   self.model.tokenizer, self.mesh, loss=tcfg.loss,
                                   seq_len=tcfg.seq_len, head=tcfg.head)
    examples = [reward_training.RMExample(r["prompt"], r["completion"], float(r["reward"]),
                                          str(r["prompt_id"])) for r in rows]
    rm, stats = reward_training.train(rm0, examples, self.mesh, tcfg, name="reward_model",
                                      metrics_log=self.metrics)
    reward_model.save(rm, self._reward_model_dir(), source=f"{self.model.source} (base)")
    log.info("reward model: held-out AUC %s (train %s) on %d held-out samples",
             stats.get("heldout_auc"), stats.get("train_auc"), stats["heldout_examples"])
    return rm, {"source": "trained on grow_001 verifier labels", **stats}

  def _uses_learned_reward(self) -> bool:
    return self.source is not None and not isinstance(self.source, rewards.VerifierReward)

  # --- Grow ----------------------------------------------------------------------------

  def _grow(self, g: int) -> list[dict]:
    """Samples (and verifies) K completions per training prompt from the current policy."""
    c = self.cfg
    stage = f"grow_{g:03d}"
    counts_path = self.wd.root / stage / "counts.json"
    if self.state.is_done(f"{stage}/generate") and counts_path.exists():
      paths = sorted((self.wd.root / stage / "samples").glob("shard-*.jsonl"))
      return [r for p in paths for r in workdir_lib.read_jsonl(p)]
    t0 = time.time()
    rows, gstats = self._sample_split(
        stage, "samples", self.train_problems(),
        self.policy((g - 1) * self.rest.improve_steps), c.num_samples, False,
        c.seed * 1_000_003 + g)
    passed = [r for r in rows if float(r["reward"]) >= 1.0]
    counts = {"samples": len(rows), "passed": len(passed),
              "prompts_solved": len({r["prompt_id"] for r in passed}),
              **{k: round(v, 2) for k, v in gstats.items()}}
    if self.is_writer:
      workdir_lib.write_json(counts_path, {"counts": counts,
                                           "times": {"generate": round(time.time() - t0, 1)}})
      self.metrics.write(g, counts, phase="grow")
    self._mark(f"{stage}/generate")
    return rows

  def _human_rows(self) -> list[dict]:
    """The training prompts' human solutions as Grow rows, `human` set; sample_idx K follows
    the prompt's K samples (0..K-1)."""
    return [{"prompt_id": p.id, "sample_idx": self.cfg.num_samples, "prompt": p.prompt,
             "completion": p.solution, "reward": 1.0, "human": True}
            for p in self._human_problems()]

  def _scores(self, g: int, rows) -> list[float]:
    """The reward source's score of every Grow sample (in `rows` order), kept on disk."""
    stage = f"grow_{g:03d}"
    path = self.wd.root / stage / "scores.jsonl"
    if self.state.is_done(f"{stage}/score") and path.exists():
      by_key = {(str(s["prompt_id"]), int(s["sample_idx"])): s["score"]
                for s in workdir_lib.read_jsonl(path)}
      return [float(by_key[(str(r["prompt_id"]), int(r["sample_idx"]))]) for r in rows]
    scores = self.source.score(rows)
    if self.is_writer:
      workdir_lib.write_jsonl(path, [{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"],
                                      "score": s} for r, s in zip(rows, scores)])
      own = [(s, float(r["reward"]) >= 1.0) for r, s in zip(rows, scores) if not r.get("human")]
      summary = {"source": self.source.name, "mean_score": float(np.mean([s for s, _ in own])),
                 "auc_vs_verifier": rm_metrics.roc_auc([s for s, _ in own],
                                                       [y for _, y in own])}
      human = [s for r, s in zip(rows, scores) if r.get("human")]
      if human:
        summary["human_solutions"] = len(human)
        summary["human_mean_score"] = float(np.mean(human))
      cpath = self.wd.root / stage / "counts.json"
      recorded = workdir_lib.read_json(cpath)
      recorded["scores"] = summary
      workdir_lib.write_json(cpath, recorded)
    self._mark(f"{stage}/score")
    return scores

  # --- Improve steps -------------------------------------------------------------------

  def _improve_step(self, g: int, s: int, rows, scores) -> dict:
    c, r = self.cfg, self.rest
    t = (g - 1) * r.improve_steps + s
    stage = f"iter_{t:03d}"
    kept_path = self.wd.root / stage / "kept.jsonl"
    counts_path = self.wd.root / stage / "counts.json"
    value = self.thresholds[s - 1]
    if not self.state.is_done(f"{stage}/filter"):
      kept, counts = rest_schedule.select(rows, scores, value=value, mode=r.threshold_mode,
                                          min_score=r.min_score, dedupe=r.dedupe,
                                          max_per_prompt=c.max_per_prompt)
      counts.update({"grow": g, "improve_step": s, "threshold": value,
                     "threshold_mode": r.threshold_mode, "reward": self.source.name})
      if self.is_writer:
        workdir_lib.write_jsonl(kept_path, kept)
        workdir_lib.write_json(counts_path, {"counts": counts, "times": {}})
        self.metrics.write(t, counts, phase="filter")
      self._mark(f"{stage}/filter")

    def weighted(kept):
      weights = rest_schedule.example_weights([k.extra["score"] for k in kept], r.loss, scores)
      return [dataclasses.replace(e, weight=w)
              for e, w in zip(sft_examples_from_kept(kept), weights)]

    # Warm start: each Improve step continues from the previous one's policy.
    counts, times = self._improve_on_kept(
        stage, t, {"iteration": t, "grow": g, "improve_step": s},
        init=lambda: self.policy(t - 1), examples=weighted,
        none_kept=f"no sample reaches the threshold {value} ({r.threshold_mode}); lower "
                  "ReSTConfig.thresholds or min_score")
    self._evaluate(stage, lambda: self.policy(t), {"counts": counts, "times": times})
    return self._best_of_n(stage)

  # --- evaluation: best-of-N by the reward ----------------------------------------------

  def _best_of_n(self, stage: str) -> dict:
    """Adds the reward's view of the held-out samples to STAGE/metrics.json: its mean score,
    its AUC against the verifier, and best-of-k accuracy (verifier reward of its top pick)."""
    path = self.wd.root / stage / "metrics.json"
    metrics = workdir_lib.read_json(path)
    if (not self.rest.best_of_n or not self._uses_learned_reward()
        or self.state.is_done(f"{stage}/best_of_n")):
      return metrics
    shard_paths = sorted((self.wd.root / stage / "eval_heldout").glob("shard-*.jsonl"))
    rows = [r for p in shard_paths for r in workdir_lib.read_jsonl(p)]
    if rows:
      scores = self.source.score(rows)
      per_prompt: dict = {}
      for row, sc in sorted(zip(rows, scores), key=lambda x: (str(x[0]["prompt_id"]),
                                                               int(x[0]["sample_idx"]))):
        per_prompt.setdefault(str(row["prompt_id"]), []).append({**row, "score": sc})
      labels = [float(row["reward"]) >= 1.0 for row in rows]
      metrics.setdefault("heldout", {}).update(rm_metrics.best_of_n(per_prompt,
                                                                    self.cfg.eval_ks))
      metrics["reward"] = {"source": self.source.name,
                           "heldout_mean_score": float(np.mean(scores)),
                           "heldout_auc": rm_metrics.roc_auc(scores, labels)}
      if self.is_writer:
        workdir_lib.write_json(path, metrics)
        flat = {**{f"heldout/{k}": v for k, v in metrics["heldout"].items()
                   if k.startswith("rm_best_of_")},
                **{f"reward/{k}": v for k, v in metrics["reward"].items()}}
        self.metrics.write(self._iteration_of(stage), flat, phase="best_of_n", stage=stage)
    self._mark(f"{stage}/best_of_n")
    return metrics

  # --- driver --------------------------------------------------------------------------

  def _sft_baseline(self):
    if not self.state.is_done("sft_human/improve"):
      params, stats = self._improve("sft_human", self.base_params, self.human_examples(),
                                    seed=self.cfg.seed)
      self._save_params("sft_human", params, stats)
      self._mark("sft_human/improve")
    else:
      params = lambda: self._load_params("sft_human")  # noqa: E731
    self._evaluate("sft_human", params, {})

  def _before_stages(self) -> list[str]:
    return ["iter_000"] + (["sft_human"] if self.cfg.sft_baseline else [])

  def _run(self) -> dict:
    c, r = self.cfg, self.rest
    self._base_stage()
    self._evaluate("iter_000", self.base_params, {})
    self._report()
    if c.sft_baseline:
      self._sft_baseline()
      self._report()
    self._prepare_source()
    best = None
    for g in range(1, r.grows + 1):
      rows = self._grow(g)
      if self._prepare_source(rows) and g == 1:
        for stage in self._before_stages():  # the reward now exists: best-of-N of the baselines
          self._best_of_n(stage)
      rows = rows + (self._human_rows() if r.include_human else [])
      scores = self._scores(g, rows)
      for s in range(1, r.improve_steps + 1):
        t = (g - 1) * r.improve_steps + s
        m = self._improve_step(g, s, rows, scores)
        score = summary.score(m)
        if best is None or score > best[1]:
          best = (t, score)
        self.state.best_iteration = best[0]
        self._save_state()
        self._report()
    self.state.finished = True
    self._save_state()
    self._report()
    return {"workdir": str(self.wd.root), "best_iteration": self.state.best_iteration,
            "report": str(self.wd.root / "report.md"),
            "reward_model_heldout_auc": self.rm_stats.get("heldout_auc"),
            "heldout_pass@1": {row["stage"]: row["metrics"].get("heldout", {}).get("pass@1")
                               for row in self.report_rows()}}

  # --- report --------------------------------------------------------------------------

  def _num_iterations(self) -> int:
    return self.num_steps   # iter_TTT counts Improve steps over all Grows

  def _report(self):
    if not self.is_writer:
      return
    rows = self.report_rows()
    cmp = self.comparison()
    title = f"ReST: {self.cfg.model} on {self.cfg.task}"
    text = report.markdown(rows, title, self.cfg.eval_ks, method="ReST",
                           verdict=cmp["verdict"] if cmp else None) + self._rest_section(rows)
    workdir_lib.write_text(self.wd.root / "report.md", text)
    report.plot(rows, self.wd.root / "report.png", method="ReST")
    summary.write_summary(self.wd.root, rows, cmp, self.state.best_iteration,
                          self.state.finished)

  def _rest_section(self, rows) -> str:
    r = self.rest
    ks = [k for k in self.cfg.eval_ks if k > 1]
    lines = ["", "## ReST: Grow and Improve steps", "",
             f"{r.grows} Grow step(s) × {r.improve_steps} Improve steps, warm-started; "
             f"thresholds {list(self.thresholds)} ({r.threshold_mode}"
             + (f", floor {r.min_score}" if r.min_score is not None else "")
             + f"); loss {r.loss}; reward: {r.reward}."]
    if self.rm_stats:
      auc = self.rm_stats.get("heldout_auc")
      lines.append(f"Reward model: {self.rm_stats.get('source', '')}; held-out AUC (pass vs "
                   f"fail) {'–' if auc is None else f'{auc:.3f}'} on "
                   f"{self.rm_stats.get('heldout_examples', '–')} samples of unseen prompts.")
    lines += ["", "Scores are the reward's; verifier accuracy is the real verifier's (of the "
              "kept samples; human solutions, when the Grow dataset holds them, are counted "
              "apart). A reward score that rises while verifier accuracy does not is reward "
              "hacking.", ""]
    head = (["stage", "grow", "step", "threshold", "kept", "kept: mean score",
             "kept: verifier acc.", "held-out: mean score", "held-out: AUC",
             "held-out pass@1 (verifier)"] + [f"held-out best-of-{k} (reward)" for k in ks]
            + [f"held-out maj@{k}" for k in ks])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(v):
      return "–" if v is None else f"{100 * v:.1f}"

    def num(v, fmt=".3f"):
      return "–" if v is None else format(v, fmt)

    for row in rows:
      m = row["metrics"]
      cn = row.get("counts") or {}
      held = m.get("heldout") or {}
      rw = m.get("reward") or {}
      thr = "–"
      if "threshold" in cn:
        thr = f"{cn['threshold']:g}" + (f" (mean {cn['threshold_mean']:.3f})"
                                        if cn.get("threshold_mode") == "quantile" else "")
      cells = [row["stage"], str(cn.get("grow", "–")), str(cn.get("improve_step", "–")), thr,
               str(cn.get("kept", "–")) + (f" ({cn['kept_human']} human)"
                                            if cn.get("kept_human") is not None else ""),
               num(cn.get("kept_mean_score")),
               pct(cn.get("kept_verifier_accuracy")), num(rw.get("heldout_mean_score")),
               num(rw.get("heldout_auc")), pct(held.get("pass@1"))]
      cells += [pct(held.get(f"rm_best_of_{k}")) for k in ks]
      cells += [pct(held.get(f"maj@{k}")) for k in ks]
      lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
