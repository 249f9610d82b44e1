"""The ReST-EM outer loop as a resumable state machine.

Stages, each made of named steps recorded in `state.json` once their outputs are on disk:

  base          load the base model (optionally a short SFT, for a randomly initialised one),
                save it to checkpoints/base, evaluate it (iter_000)
  sft_human     the paper's baseline: fine-tune the base on the human solutions, evaluate
  iter_NNN      generate (sharded) -> filter -> improve (from the base, or warm) -> evaluate

Every stage is evaluated on the test split (reported only), the validation split (training
problems never sampled for training; it picks the best iteration and drives early stopping)
and the train split (training prompts without a human solution). `report.md` and the
top-level `metrics.json` compare the best iteration with the base and the SFT baseline on the
test split, with paired bootstrap intervals.

This module is the only one that knows the order of phases.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import time

import gin
import jax

from rest_jax.runtime import checkpoints as ckpt_lib
from rest_jax.runtime import distributed as dist
from rest_jax.runtime import sample_placement
from rest_jax.loop import adaptive_sampling
from rest_jax.loop.config import ConfigChangedError, LoopConfig, RunSettingError  # noqa: F401
from rest_jax.loop import evaluate_model
from rest_jax.loop import filtering
from rest_jax.loop import generate
from rest_jax.training import improve
from rest_jax.loop import report
from rest_jax.loop import splits
from rest_jax.loop import summary
from rest_jax.runtime import workdir as workdir_lib
from rest_jax.models import loading
from rest_jax.models import params as params_lib
from rest_jax.sampling.sampler import Sampler, SamplingParams
from rest_jax.tasks import get_task
from rest_jax.tasks.kept import SFTExample, parse_kept_lines, sft_examples_from_kept
from rest_jax.runtime.telemetry import MetricsLog
from rest_jax.verifiers import VerifierPool

log = logging.getLogger(__name__)


class Loop:

  def __init__(self, cfg: LoopConfig, mesh):
    if cfg.mode not in ("rest_em", "sft_human"):
      raise RunSettingError(f"LoopConfig.mode={cfg.mode!r}: expected 'rest_em' or 'sft_human'")
    self.adaptive = adaptive_sampling.Settings.of(cfg)  # None: the fixed K per prompt
    self.cfg = cfg
    self.mesh = mesh
    self.wd = workdir_lib.Workdir(cfg.workdir)
    self.is_writer = dist.is_writer()  # process 0 alone writes state, reports, metrics
    self.state = self.wd.load_state() or workdir_lib.RunState()
    self.metrics = MetricsLog(self.wd.root) if self.is_writer else None
    self.task = None
    self.model = None
    self.base_params = None
    self._policy: tuple[int, object] | None = None  # (iteration, params) last trained/loaded
    self.sampler = None
    self.pool = None
    self._local = None   # (global params, their sampling copy: per host, compute dtype)
    sample_placement.check(cfg.sample_placement)

  # --- bookkeeping -------------------------------------------------------------------

  def _save_state(self):
    if self.is_writer:
      self.wd.save_state(self.state)

  def _mark(self, step: str):
    """Records `step` as finished; no process goes on until every process got here."""
    if self.metrics is not None:
      self.metrics.flush()   # the step's rows are durable before the step is recorded
    self.state.mark(step)
    self._save_state()
    dist.barrier(step)

  def _record_shards(self, step: str):
    def record(done: list[int]):
      self.state.shards[step] = done
      self._save_state()
    return record

  def check_config(self, config_text: str):
    """Refuses to resume a workdir whose recorded config differs (unless allowed)."""
    path = self.wd.root / "config.gin"
    if path.exists():
      old = path.read_text()
      if old != config_text:
        diff = "".join(difflib.unified_diff(old.splitlines(True), config_text.splitlines(True),
                                            "config.gin (in workdir)", "config.gin (now)"))
        if not self.cfg.allow_config_change:
          raise ConfigChangedError(
              f"{self.wd.root} holds a run with a different config; rerun with the same "
              "config to resume, use a new WORKDIR, or set "
              f"LoopConfig.allow_config_change=True.\n{diff}")
        log.warning("config changed on resume (allowed):\n%s", diff)
        if self.is_writer:
          workdir_lib.write_text(self.wd.root / f"config.{int(time.time())}.prev.gin", old)
    if self.is_writer:
      workdir_lib.write_text(path, config_text)
    dist.barrier("config")

  # --- components ----------------------------------------------------------------------

  def _setup(self):
    cfg = self.cfg
    # remat only changes the backward pass: Improve keeps one layer's activations at a time.
    self.model = loading.load_model(cfg.model, self.mesh, seed=cfg.seed, remat=True,
                                    dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype,
                                    attention=cfg.attention)
    tok = self.model.tokenizer
    self.task = get_task(cfg.task, tokenizer=tok)
    self.placement = sample_placement.resolve(cfg.sample_placement, self.mesh,
                                              self.model.params, cfg.compute_dtype)
    self.sample_mesh = sample_placement.sampling_mesh(self.mesh, self.placement)
    if dist.process_count() > 1:
      log.info("Generate runs %s: sampler mesh %s", {
          "global": "on the global mesh, all processes together",
          "per_host": "on each host's own devices"}[self.placement],
               " x ".join(f"{k}={v}" for k, v in self.sample_mesh.shape.items()))
    self.sampler = Sampler(self.model.graphdef, self.model.config, tok, self.sample_mesh,
                           num_slots=cfg.sampler_slots, cache_dtype=cfg.compute_dtype)
    self.pool = VerifierPool()
    self._ckpt = lambda sub: ckpt_lib.CheckpointManager(self.wd.checkpoints / sub)

  def problems(self, split: str, limit: int | None):
    probs = self.task.problems(split)
    return probs if limit is None else probs[:limit]

  def _train_and_val(self) -> tuple[list, list]:
    return splits.train_and_val(self.task.problems("train"), self.cfg)

  def train_problems(self) -> list:
    """The training prompts Generate samples on (never the validation prompts)."""
    return self._train_and_val()[0]

  def val_problems(self) -> list:
    return self._train_and_val()[1]

  def _human_problems(self) -> list:
    return splits.human_problems(self.train_problems(), self.cfg)

  def train_eval_problems(self) -> list:
    return splits.train_eval_problems(self.train_problems(), self.cfg)

  def human_examples(self) -> list[SFTExample]:
    """Human solutions of the training prompts the loop samples on (the SFT baseline's data)."""
    probs = self._human_problems()
    if not probs:
      raise RunSettingError(f"task {self.cfg.task!r} has no human solutions: set "
                            "LoopConfig.sft_baseline=False and LoopConfig.base_sft_steps=0")
    return [SFTExample(prompt=p.prompt, completion=p.solution, source_id=p.id) for p in probs]

  def _sampling(self, greedy: bool = False) -> SamplingParams:
    c = self.cfg
    return SamplingParams(temperature=0.0 if greedy else c.temperature, top_k=c.top_k,
                          top_p=c.top_p, max_new_tokens=c.max_new_tokens, stop=tuple(c.stop))

  def _save_params(self, sub: str, params, meta: dict):
    # model_meta makes the checkpoint self-contained: `--model WORKDIR/checkpoints/iter_001`.
    with self._ckpt(sub) as m:
      m.save(0, params=params, meta={**loading.model_meta(self.model), **meta})
      m.wait()

  def _load_params(self, sub: str):
    with self._ckpt(sub) as m:
      abstract = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          self.model.params, params_lib.shardings(self.mesh, self.model.params))
      return m.restore_params(0, abstract)

  # --- phases --------------------------------------------------------------------------

  def _sampling_params(self, params):
    """`params` as the sampler reads them: on the sampling mesh (a per-host replica made on
    the devices, for `per_host` placement) and in the compute dtype (bfloat16 models: one
    on-device cast per policy)."""
    if self._local is None or self._local[0] is not params:
      local = sample_placement.to_sampling_mesh(params, self.mesh, self.sample_mesh,
                                                params_lib.shardings)
      self._local = (params, self.sampler.serving_params(local))
    return self._local[1]

  def _improve(self, stage: str, init_params, examples, seed: int):
    self._local = None  # the sampling copy is not needed while training
    params, stats = improve.improve(
        name=stage, graphdef=self.model.graphdef, init_params=init_params, examples=examples,
        tokenizer=self.model.tokenizer, mesh=self.mesh,
        checkpoint_dir=self.wd.checkpoints / f"train_{stage}", seed=seed,
        metrics_log=self.metrics, process_index=dist.process_index(),
        process_count=dist.process_count())
    return params, stats

  def _sample_split(self, stage: str, name: str, problems, params, num_samples: int,
                    greedy: bool, seed: int):
    rows, stats = generate.run_shards(
        problems, self.wd.root / stage / name, prompts_per_shard=self.cfg.prompts_per_shard,
        desc=f"{stage}/{name}", record=self._record_shards(f"{stage}/{name}"),
        sampler=self.sampler, params=self._sampling_params(params),
        tokenizer=self.model.tokenizer, pool=self.pool, num_samples=num_samples,
        sampling=self._sampling(greedy), seed=seed, overlap=self.cfg.verify_overlap)
    return rows, stats

  def _sample_adaptive(self, stage: str, problems, params, seed: int):
    """Generate in rounds under a token budget (`LoopConfig.adaptive_rounds`)."""
    return adaptive_sampling.run_rounds(
        problems, self.wd.root / stage, self.adaptive,
        prompts_per_shard=self.cfg.prompts_per_shard, desc=stage,
        record=lambda sub: self._record_shards(f"{stage}/{sub}"), sampler=self.sampler,
        params=self._sampling_params(params), tokenizer=self.model.tokenizer, pool=self.pool,
        sampling=self._sampling(), seed=seed, overlap=self.cfg.verify_overlap)

  def _evaluate(self, stage: str, params, extra: dict) -> dict:
    """Held-out (sampled + greedy) and train-split metrics; writes STAGE/metrics.json."""
    path = self.wd.root / stage / "metrics.json"
    if self.state.is_done(f"{stage}/evaluate") and path.exists():
      return workdir_lib.read_json(path)
    params = params() if callable(params) else params  # loaded only when needed
    c = self.cfg
    # The same draws for every stage (paired comparisons), and for `rest-jax eval`.
    settings = evaluate_model.EvalSettings.from_loop_config(c)
    t0 = time.time()
    out = {}
    splits = [("heldout", self.problems("test", c.num_eval_prompts))]
    if c.num_val_prompts:
      splits.append(("val", self.val_problems()))
    splits.append(("train", self.train_eval_problems()))
    for name, problems in splits:
      out[name] = evaluate_model.evaluate_split(
          problems, self.wd.root / stage, name, settings=settings,
          sampler=self.sampler, params=self._sampling_params(params),
          tokenizer=self.model.tokenizer, pool=self.pool, desc=stage,
          record=lambda subdir: self._record_shards(f"{stage}/{subdir}")).summary
    metrics = {**extra, **out, "stage": stage}
    metrics.setdefault("times", {})["evaluate"] = round(time.time() - t0, 1)
    if self.is_writer:
      workdir_lib.write_json(path, metrics)
      self.metrics.write(self._iteration_of(stage), _flat(out), phase="evaluate", stage=stage)
    self._mark(f"{stage}/evaluate")
    return metrics

  @staticmethod
  def _iteration_of(stage: str) -> int:
    return int(stage.split("_")[1]) if stage.startswith("iter_") else 0

  def _base_stage(self):
    c = self.cfg
    if self.state.is_done("base/save"):
      self.base_params = self._load_params("base")
      return
    params = self.model.params
    if c.base_sft_steps:
      examples = self.human_examples()
      # Under the 'base_sft' gin scope: `base_sft/make_optimizer.learning_rate = ...` gives the
      # making of the base its own optimizer settings, apart from every Improve phase's.
      with gin.config_scope("base_sft"):
        params, _ = improve.improve(
            name="base_sft", graphdef=self.model.graphdef, init_params=params,
            examples=examples, tokenizer=self.model.tokenizer, mesh=self.mesh,
            checkpoint_dir=self.wd.checkpoints / "train_base_sft", seed=c.seed,
            cfg=dataclasses.replace(improve.ImproveConfig(), steps=c.base_sft_steps),
            process_index=dist.process_index(), process_count=dist.process_count())
    self._save_params("base", params, {"source": self.model.source})
    self.base_params = params
    self._mark("base/save")

  def _iteration(self, i: int) -> dict:
    c = self.cfg
    stage = f"iter_{i:03d}"
    times: dict = {}
    kept_path = self.wd.root / stage / "kept.jsonl"
    counts_path = self.wd.root / stage / "counts.json"
    if not self.state.is_done(f"{stage}/filter"):
      t0 = time.time()
      seed = c.seed * 1_000_003 + i   # both arms: sample j of a prompt is the same completion
      if self.adaptive is None:
        rows, gstats = self._sample_split(stage, "samples", self.train_problems(),
                                          self.policy(i - 1), c.num_samples, False, seed)
      else:
        rows, gstats = self._sample_adaptive(stage, self.train_problems(), self.policy(i - 1),
                                             seed)
      times["generate"] = round(time.time() - t0, 1)
      kept, counts = filtering.filter_samples(rows, max_per_prompt=c.max_per_prompt)
      counts.update({k: round(v, 2) for k, v in gstats.items()})
      if self.is_writer:
        workdir_lib.write_jsonl(kept_path, kept)
        workdir_lib.write_json(counts_path, {"counts": counts, "times": times})
        self.metrics.write(i, counts, phase="generate")
      self._mark(f"{stage}/filter")
    counts, times = self._improve_on_kept(
        stage, i, {"iteration": i},
        init=lambda: self.base_params if c.restart_from_base else self.policy(i - 1),
        examples=sft_examples_from_kept,
        none_kept="no sample passed the verifier ({counts}); the policy solves nothing at this "
                  "difficulty: use an easier task setting, more samples per prompt, or a "
                  "stronger base model")
    return self._evaluate(stage, lambda: self.policy(i), {"counts": counts, "times": times})

  def _set_aside(self, stage: str):
    """Moves STAGE's directory aside and forgets its steps: a rerun samples it again."""
    aside = self.wd.aside_path(stage, "nothing_kept")
    dist.barrier(f"{stage}/set_aside")   # every process named the same place
    if self.is_writer:
      (self.wd.root / stage).rename(aside)
      self.state.forget(stage)
      self._save_state()
    dist.barrier(f"{stage}/set_aside/done")
    return aside

  def _improve_on_kept(self, stage: str, index: int, meta: dict, *, init, examples,
                       none_kept: str) -> tuple[dict, dict]:
    """STAGE's Improve phase on its filtered `kept.jsonl`, unless `state.json` marks it done.

    `init()` gives the params to start from, `examples(kept)` the SFT examples, and
    `none_kept` (formatted with `counts`) the error when nothing was kept. The policy of
    iteration `index` becomes the result. Returns STAGE's recorded (counts, times).
    """
    kept_path = self.wd.root / stage / "kept.jsonl"
    counts_path = self.wd.root / stage / "counts.json"
    recorded = workdir_lib.read_json(counts_path)
    counts, times = recorded["counts"], recorded["times"]
    if self.state.is_done(f"{stage}/improve"):
      return counts, times
    kept = parse_kept_lines(kept_path.read_text().splitlines(), source=str(kept_path))
    if not kept:
      aside = self._set_aside(stage)
      raise RunSettingError(
          f"{stage}: " + none_kept.format(counts=counts) + f". What is done is kept ({stage}'s "
          f"samples in {aside}); after the change, rerun the same command with "
          f"--gin.LoopConfig.allow_config_change=True to go on from {stage}")
    t0 = time.time()
    params, tstats = self._improve(stage, init(), examples(kept), seed=self.cfg.seed + index)
    self._save_params(stage, params, {**meta, **tstats})
    times["improve"] = round(time.time() - t0, 1)
    if self.is_writer:
      workdir_lib.write_json(counts_path, {"counts": counts, "times": times, "train": tstats})
    self._mark(f"{stage}/improve")
    self._policy = (index, params)
    return counts, times

  def policy(self, i: int):
    """The params after iteration i (0: the base), loaded from its checkpoint if needed."""
    if i == 0:
      return self.base_params
    if self._policy is None or self._policy[0] != i:
      self._policy = (i, self._load_params(f"iter_{i:03d}"))
    return self._policy[1]

  # --- driver --------------------------------------------------------------------------

  def _num_iterations(self) -> int:
    """How many `iter_NNN` stages the run has (the report's rows)."""
    return self.cfg.iterations

  def report_rows(self) -> list[dict]:
    return summary.report_rows(self.wd.root, self._num_iterations(), self.state.best_iteration)

  method = "ReST-EM"

  def comparison(self) -> dict | None:
    """`summary.comparison` of this run's best iteration on its test prompts."""
    ids = [p.id for p in self.problems("test", self.cfg.num_eval_prompts)]
    return summary.comparison(self.wd.root, self.state.best_iteration, ids, self.method)

  def _report(self):
    if self.is_writer:
      rows = self.report_rows()
      cmp = self.comparison()
      report.write(self.wd.root, rows, f"ReST-EM: {self.cfg.model} on {self.cfg.task}",
                   self.cfg.eval_ks, verdict=cmp["verdict"] if cmp else None)
      summary.write_summary(self.wd.root, rows, cmp, self.state.best_iteration,
                            self.state.finished)

  def run(self) -> dict:
    self._setup()
    try:
      return self._run()
    finally:
      self.pool.close()
      if self.metrics is not None:
        self.metrics.close()

  def _run(self) -> dict:
    c = self.cfg
    self._base_stage()
    self._evaluate("iter_000", self.base_params, {})
    self._report()
    if c.sft_baseline or c.mode == "sft_human":
      if not self.state.is_done("sft_human/improve"):
        params, stats = self._improve("sft_human", self.base_params, self.human_examples(),
                                      seed=c.seed)
        self._save_params("sft_human", params, stats)
        self._mark("sft_human/improve")
      else:
        params = lambda: self._load_params("sft_human")  # noqa: E731
      self._evaluate("sft_human", params, {})
      self._report()
    if c.mode == "rest_em":
      best = None
      for i in range(1, c.iterations + 1):
        if self.state.stopped_early:
          break
        m = self._iteration(i)
        score = summary.score(m)
        if best is None or score > best[1]:
          best = (i, score)
        self.state.best_iteration = best[0]
        if c.early_stop and i > 1 and score < summary.score(self._metrics_of(i - 1)):
          log.info("%s pass@1 fell at iteration %d: stopping early", summary.selection_split(m), i)
          self.state.stopped_early = True
        self._save_state()
        self._report()
    self.state.finished = True
    self._save_state()
    self._report()
    return {"workdir": str(self.wd.root), "best_iteration": self.state.best_iteration,
            "report": str(self.wd.root / "report.md"),
            "heldout_pass@1": {r["stage"]: r["metrics"].get("heldout", {}).get("pass@1")
                               for r in self.report_rows()}}

  def _metrics_of(self, i: int) -> dict:
    return workdir_lib.read_json(self.wd.root / f"iter_{i:03d}" / "metrics.json")


def _flat(out: dict) -> dict:
  return {f"{split}/{k}": v for split, m in out.items() for k, v in m.items()
          if isinstance(v, (int, float))}
