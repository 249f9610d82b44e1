"""Training a reward model on (prompt, completion, score) data.

Losses (`RewardTrainConfig.loss`):

* `bce`: binary cross-entropy of the head's logit against the score clipped to [0, 1]
  (verifier labels 0/1: an outcome reward model; its scores are pass probabilities);
* `mse`: regression of the head's output onto the score;
* `pairwise`: Bradley-Terry, `-log sigmoid(r(chosen) - r(rejected))` over pairs of
  completions of the same prompt whose scores differ (the higher one is chosen).

The train step is a pure function jitted with explicit in/out shardings and the train state
donated, like `training.make_train_step`. Batches are drawn from `(seed, step)` alone, so a
rerun of the same training gives the same model. Prompts are split into train and held-out
by a hash of their id, so no held-out prompt is seen in training; the held-out AUC (pass vs
fail) is the number to read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.rewards import model as rm_lib
from rest_jax.rewards import metrics as rm_metrics
from rest_jax.training import state as state_lib
from rest_jax.training import step as training

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
  """Budget and loss of reward model training.

  balance: draw half of each pointwise batch from passed (score >= pass_threshold) and half
    from failed examples when both exist: verifier labels are usually very unbalanced. (With
    `bce`, scores are then pass probabilities under equal priors: fine for ranking.)
  head: what the scalar head reads (`rewards/model.HEADS`): `last`, the last token's hidden
    state; `last+loglik` (the default), that plus the completion's mean log-probability under
    the backbone's own LM head. With `last+loglik`, the weight and bias of the log-likelihood
    start from a logistic regression of the labels on it (computed once, under the initial
    backbone), so training starts from what the policy already knows.
  supervise: where a pointwise loss (`bce`, `mse`) applies: `last`, the last token only (what
    is scored); `completion`, every completion token, each predicting the outcome from the
    completion so far (a token-level verifier, Cobbe et al. 2021: one label supervises every
    position, which fits a small data set less tightly than one scalar per sequence). Scores
    are read at the last token either way. `pairwise` always compares last tokens.
  """

  steps: int = 300
  batch_size: int = 32
  learning_rate: float = 1e-4
  warmup_steps: int = 10
  loss: str = "bce"
  seq_len: int = 256
  heldout_fraction: float = 0.1
  pass_threshold: float = 0.5
  balance: bool = True
  head: str = "last+loglik"
  supervise: str = "last"
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class RMExample:
  prompt: str
  completion: str
  score: float
  group: str  # examples of one prompt share it (pairs, the held-out split)


SUPERVISE = ("last", "completion")


def check(cfg: RewardTrainConfig) -> None:
  """Raises ValueError naming a setting of `cfg` that cannot work, before any training."""
  if cfg.loss not in rm_lib.LOSSES:
    raise ValueError(f"RewardTrainConfig.loss={cfg.loss!r}: expected one of {rm_lib.LOSSES}")
  if cfg.head not in rm_lib.HEADS:
    raise ValueError(f"RewardTrainConfig.head={cfg.head!r}: expected one of {rm_lib.HEADS}")
  if cfg.supervise not in SUPERVISE:
    raise ValueError(f"RewardTrainConfig.supervise={cfg.supervise!r}: expected one of "
                     f"{SUPERVISE}")
  if cfg.head != "last" and cfg.supervise != "last":
    raise ValueError(f"RewardTrainConfig.supervise={cfg.supervise!r} trains a head on hidden "
                     f"states alone, and RewardTrainConfig.head={cfg.head!r}: use "
                     "supervise='last' or head='last'")


def heldout_split(examples: Sequence[RMExample], fraction: float, seed: int = 0
                  ) -> tuple[list[int], list[int]]:
  """(train indices, held-out indices), by a hash of the prompt group."""
  train, held = [], []
  for i, ex in enumerate(examples):
    h = int(hashlib.sha256(f"{seed}:{ex.group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    (held if h < fraction else train).append(i)
  return train, held


def _state_shardings(mesh, params, optimizer) -> state_lib.TrainState:
  param_sh = rm_lib.param_shardings(mesh, params)
  abstract_opt = jax.eval_shape(optimizer.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, sh: sh, abstract_opt, param_sh,
      transform_non_params=lambda _: mesh_lib.replicated(mesh),
      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return state_lib.TrainState(step=mesh_lib.replicated(mesh), params=param_sh, opt_state=opt_sh)


def _pointwise(raw, targets, loss: str):
  if loss == "bce":
    return optax.sigmoid_binary_cross_entropy(raw, jnp.clip(targets, 0.0, 1.0))
  return jnp.square(raw - targets)


def loss_fn(graphdef, params, batch, loss: str, supervise: str = "last"):
  """Mean loss over a batch: tokens [N, L], lengths [N], starts [N] (each completion's first
  token), targets [N] (pairwise: N = 2B, the first B rows chosen, the last B rejected)."""
  if supervise == "completion" and loss in ("bce", "mse"):
    raw_NxL = rm_lib.raw_scores_per_position(graphdef, params, batch["tokens"])
    pos_L = jnp.arange(raw_NxL.shape[1])
    mask_NxL = ((pos_L[None] >= batch["starts"][:, None])
                & (pos_L[None] < batch["lengths"][:, None])).astype(jnp.float32)
    value_NxL = _pointwise(raw_NxL, batch["targets"][:, None], loss) * mask_NxL
    per_row = value_NxL.sum(1) / jnp.maximum(mask_NxL.sum(1), 1.0)
    return jnp.mean(per_row)
  raw = rm_lib.raw_scores(graphdef, params, batch["tokens"], batch["lengths"],
                         batch.get("starts"))
  if loss == "bce":
    value = optax.sigmoid_binary_cross_entropy(raw, jnp.clip(batch["targets"], 0.0, 1.0))
  elif loss == "mse":
    value = jnp.square(raw - batch["targets"])
  elif loss == "pairwise":
    b = raw.shape[0] // 2
    value = jax.nn.softplus(-(raw[:b] - raw[b:]))
  else:
    raise ValueError(f"reward model loss {loss!r}: expected one of {rm_lib.LOSSES}")
  return jnp.mean(value)


def make_train_step(graphdef, optimizer, state_shardings, mesh, loss: str,
                    supervise: str = "last"):
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and donation."""

  def step(state, batch):
    value, grads = jax.value_and_grad(
        lambda p: loss_fn(graphdef, p, batch, loss, supervise))(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
            {"loss": value, "grad_norm": optax.tree.norm(grads)})

  batch_sh = {"tokens": mesh_lib.batch_sharding(mesh, 2),
              "lengths": mesh_lib.batch_sharding(mesh, 1),
              "starts": mesh_lib.batch_sharding(mesh, 1),
              "targets": mesh_lib.batch_sharding(mesh, 1)}
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
                   donate_argnums=(0,))

  def run(state, batch):
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  return run


class _Batches:
  """Batch `step` is drawn from `(seed, step)` alone: reproducible and stateless."""

  def __init__(self, seqs, starts, scores, groups, cfg: RewardTrainConfig, rows: int,
               pad_id: int):
    self.seqs, self.scores, self.cfg, self.rows, self.pad_id = seqs, scores, cfg, rows, pad_id
    self.starts = np.asarray(starts, np.int32)
    self.length = rm_lib.bucket_len(max(len(s) for s in seqs), cfg.seq_len)
    n = len(seqs)
    if cfg.loss == "pairwise":
      by_group: dict = {}
      for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
      self.pairs = np.asarray([(i, j) for ids in by_group.values() for i in ids for j in ids
                               if scores[i] > scores[j]], np.int64).reshape(-1, 2)
      if not len(self.pairs):
        raise ValueError("pairwise loss: no prompt has two completions with different scores")
    else:
      passed = np.asarray(scores) >= cfg.pass_threshold
      self.pos, self.neg = np.flatnonzero(passed), np.flatnonzero(~passed)
      self.all = np.arange(n)

  def __call__(self, step: int) -> dict:
    rng = np.random.default_rng([self.cfg.seed, step])
    b = self.cfg.batch_size
    if self.cfg.loss == "pairwise":
      pick = self.pairs[rng.integers(0, len(self.pairs), b)]
      idx = np.concatenate([pick[:, 0], pick[:, 1]])
    elif self.cfg.balance and len(self.pos) and len(self.neg):
      idx = np.concatenate([rng.choice(self.pos, b // 2), rng.choice(self.neg, b - b // 2)])
    else:
      idx = rng.choice(self.all, b)
    tokens, lengths = rm_lib.pad_batch([self.seqs[i] for i in idx], self.length, self.rows,
                                       self.pad_id)
    targets = np.zeros((self.rows,), np.float32)
    targets[:len(idx)] = np.asarray(self.scores, np.float32)[idx]
    starts = np.zeros((self.rows,), np.int32)
    starts[:len(idx)] = self.starts[idx]
    return {"tokens": tokens, "lengths": lengths, "starts": starts, "targets": targets}


def _fit_loglik_weight(rm: rm_lib.RewardModel, mesh, seqs, starts, passed) -> rm_lib.RewardModel:
  """Sets the head's log-likelihood weight `a` and bias `b` to the logistic regression of the
  pass labels on the completions' mean log-probability under the current backbone, with both
  classes weighted equally (as balanced batches see them). Newton's method on two parameters."""
  probe = dataclasses.replace(rm, params={**rm.params, "head": {
      **rm.params["head"], "a": jnp.ones((), jnp.float32), "b": jnp.zeros((), jnp.float32),
      "w": jnp.zeros_like(rm.params["head"]["w"])}}, meta={**rm.meta, "loss": "mse"})
  x = rm_lib.RewardScorer(probe, mesh).score_tokens(seqs, None, starts).astype(np.float64)
  y = np.asarray(passed, np.float64)
  if y.all() or not y.any():
    return rm
  weight = np.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
  mu, sd = x.mean(), x.std() or 1.0
  z = (x - mu) / sd
  theta = np.zeros(2)
  for _ in range(25):
    p = 1 / (1 + np.exp(-(theta[0] * z + theta[1])))
    g = np.array([np.sum(weight * (p - y) * z), np.sum(weight * (p - y))])
    h = weight * p * (1 - p)
    hess = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]]) + 1e-6
    theta -= np.linalg.solve(hess, g)
  a = theta[0] / sd
  b = theta[1] - a * mu
  log.info("reward model: log-likelihood weight %.3g, bias %.3g (logistic fit on %d examples)",
           a, b, len(y))
  head = {**rm.params["head"], "a": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  sh = rm_lib.param_shardings(mesh, {**rm.params, "head": head})["head"]
  return dataclasses.replace(rm, params={**rm.params, "head": jax.device_put(head, sh)})


def evaluate(scorer: rm_lib.RewardScorer, examples: Sequence[RMExample], pass_threshold: float,
             desc: str | None = None) -> dict:
  """AUC of pass vs fail and mean scores of each class."""
  if not examples:
    return {"examples": 0}
  scores = scorer.score([e.prompt for e in examples], [e.completion for e in examples], desc)
  labels = np.asarray([e.score >= pass_threshold for e in examples])
  out = {"examples": len(examples), "passed": int(labels.sum()),
         "auc": rm_metrics.roc_auc(scores, labels)}
  if labels.any():
    out["mean_score_passed"] = float(scores[labels].mean())
  if (~labels).any():
    out["mean_score_failed"] = float(scores[~labels].mean())
  return out


def train(rm: rm_lib.RewardModel, examples: Sequence[RMExample], mesh,
          cfg: RewardTrainConfig | None = None, *, name: str = "reward_model",
          metrics_log=None) -> tuple[rm_lib.RewardModel, dict]:
  """Trains `rm` (its loss and seq_len set from `cfg`) on `examples`; returns (rm, stats)."""
  cfg = cfg or RewardTrainConfig()
  check(dataclasses.replace(cfg, head=rm.head))
  if not examples:
    raise ValueError(f"{name}: no examples to train the reward model on")
  rm = dataclasses.replace(rm, meta={**rm.meta, "loss": cfg.loss,
                                     "seq_len": int(min(cfg.seq_len, rm.config.max_seq_len))})
  train_idx, held_idx = heldout_split(examples, cfg.heldout_fraction, cfg.seed)
  if not train_idx:
    raise ValueError(f"{name}: heldout_fraction={cfg.heldout_fraction} leaves no training "
                     "prompts")
  train_ex = [examples[i] for i in train_idx]
  encoded = [rm_lib.encode_pair_with_start(rm.tokenizer, e.prompt, e.completion, rm.seq_len)
             for e in train_ex]
  seqs = [ids for ids, _ in encoded]
  shards = mesh_lib.batch_shards(mesh)
  per_batch = cfg.batch_size * (2 if cfg.loss == "pairwise" else 1)
  rows = -(-per_batch // shards) * shards
  pad = rm.tokenizer.pad_id if rm.tokenizer.pad_id is not None else 0
  batches = _Batches(seqs, [start for _, start in encoded], [e.score for e in train_ex],
                     [e.group for e in train_ex], cfg, rows, pad)
  if rows != per_batch and cfg.loss == "pairwise":
    raise ValueError(f"{name}: pairwise batches of {cfg.batch_size} pairs need 2 x batch_size "
                     f"divisible by the {shards} devices on the batch axes")
  optimizer = training.make_optimizer(learning_rate=cfg.learning_rate,
                                      warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                      decay="cosine", weight_decay=0.0, clip_norm=1.0)
  sh = _state_shardings(mesh, rm.params, optimizer)

  def init(p):
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                opt_state=optimizer.init(p))

  if "a" in rm.params["head"] and cfg.loss != "pairwise":
    rm = _fit_loglik_weight(rm, mesh, seqs, [st for _, st in encoded],
                            np.asarray([e.score for e in train_ex]) >= cfg.pass_threshold)
  with jax.set_mesh(mesh):
    # Training donates the state: start from a copy so `rm.params` stay valid.
    state = jax.jit(lambda p: init(jax.tree.map(jnp.copy, p)), in_shardings=(sh.params,),
                    out_shardings=sh)(rm.params)
  step_fn = make_train_step(rm.graphdef, optimizer, sh, mesh, cfg.loss, cfg.supervise)
  t0 = time.time()
  loss = float("nan")
  bar = tqdm(total=cfg.steps, desc=f"{name} train", unit="step", leave=False)
  for step in range(cfg.steps):
    state, metrics = step_fn(state, batches(step))
    if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
      m = jax.device_get(metrics)
      loss = float(m["loss"])
      bar.set_postfix(loss=f"{loss:.3f}")
      if metrics_log is not None:
        metrics_log.write(step + 1, {"loss": loss, "grad_norm": float(m["grad_norm"])},
                          phase=name)
    bar.update(1)
  bar.close()
  seconds = time.time() - t0
  trained = dataclasses.replace(rm, params=state.params)
  scorer = rm_lib.RewardScorer(trained, mesh)
  held = evaluate(scorer, [examples[i] for i in held_idx], cfg.pass_threshold,
                  desc=f"{name} held-out")
  # Training-set AUC on at most 2,000 examples: only to see over- or under-fitting.
  sub = train_ex[:: max(1, len(train_ex) // 2000)]
  fit = evaluate(scorer, sub, cfg.pass_threshold, desc=None)
  stats = {"examples": len(examples), "train_examples": len(train_ex),
           "heldout_examples": len(held_idx), "train_passed": int(len(batches.pos)) if
           cfg.loss != "pairwise" else None, "steps": cfg.steps, "final_loss": loss,
           "seconds": round(seconds, 1), "loss": cfg.loss, "supervise": cfg.supervise,
           "heldout": held, "train": fit,
           "heldout_auc": held.get("auc"), "train_auc": fit.get("auc")}
  trained.meta.update({"trained": {k: v for k, v in stats.items()
                                   if k not in ("heldout", "train")}})
  return trained, stats
