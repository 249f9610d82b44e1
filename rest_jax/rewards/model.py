"""The reward model: the policy's transformer with a scalar head, and batched scoring on the mesh.

A reward model is the `Transformer` (same config, same layers, its own copy of the weights)
whose final-normed hidden state at each sequence's last real token (the EOS after the
completion, which has read the whole prompt + completion) goes through a linear head to one
scalar. Parameters are one pytree::

  {"backbone": nnx.State (the Transformer's params), "head": {"w": [embed], "b": []}}

so the backbone shards exactly like the policy and the head follows `embed`.

Sequences are tokenised as the sampler and SFT see them (`tasks.sft`): `[bos] + prompt +
completion + [eos]`, right-padded; too long ones keep their end (where the answer is).
What a score means depends on the training loss (`meta["loss"]`): `bce` scores are
sigmoid probabilities of passing in [0, 1]; `mse` scores regress the label; `pairwise` scores
are Bradley-Terry logits (only differences within a prompt mean anything).

A checkpoint (`save`/`load`) is an orbax directory of `rest_jax.runtime.checkpoints.CheckpointManager`
whose meta holds the model config and tokenizer (self-contained, like policy checkpoints)
plus `reward_model` (loss, sequence length, training statistics).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from tqdm.auto import tqdm

from rest_jax.runtime import checkpoints as ckpt_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax import tokenizers as tokenizers_lib
from rest_jax.models import loading
from rest_jax.models import params as params_lib
from rest_jax.models.config import ModelConfig
from rest_jax.models.weights import WeightsError
from rest_jax.tasks import sft as sft_lib

log = logging.getLogger(__name__)

LOSSES = ("bce", "mse", "pairwise")
# What the head reads: `last`, the final hidden state at the last token; `last+loglik`, that
# plus the mean log-probability the backbone's own LM head gives the completion's tokens. A
# backbone copied from the policy already knows which steps are likely: a completion with a
# false step (`3 + 4 = 8`) has tokens the policy itself finds improbable. A linear head on one
# hidden state has to relearn that from a few thousand labels; the log-likelihood hands it over.
HEADS = ("last", "last+loglik")
LOGLIK_CHUNK = 256   # positions of output logits at a time (a large vocabulary's [B, L, V])


@dataclasses.dataclass
class RewardModel:
  """A reward model ready to score: `score_batch(graphdef, params, tokens, lengths)`."""

  config: ModelConfig
  graphdef: Any          # the backbone Transformer's graphdef
  params: dict           # {"backbone": nnx.State, "head": {"w", "b"}}
  tokenizer: Any
  meta: dict             # {"loss": ..., "seq_len": ..., ...}

  @property
  def loss(self) -> str:
    return self.meta.get("loss", "bce")

  @property
  def seq_len(self) -> int:
    return int(self.meta.get("seq_len") or self.config.max_seq_len)

  @property
  def head(self) -> str:
    return self.meta.get("head", "last")


def _head_params(embed_dim: int, head: str, make) -> dict:
  out = {"w": make((embed_dim,)), "b": make(())}
  if head == "last+loglik":
    out["a"] = make(())
  return out


def param_shardings(mesh, params: dict) -> dict:
  """Backbone as the policy's params; the head's `w` follows `embed`, its bias replicates."""
  head = params["head"]
  return {"backbone": params_lib.shardings(mesh, params["backbone"]),
          "head": {k: (mesh_lib.logical_sharding(mesh, ("embed",), v.shape) if k == "w"
                       else mesh_lib.replicated(mesh)) for k, v in head.items()}}


def abstract(mesh, params: dict):
  """ShapeDtypeStructs with shardings: a restore target for `params` on `mesh`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      params, param_shardings(mesh, params))


def from_policy(graphdef, backbone_params, config: ModelConfig, tokenizer, mesh, *,
                loss: str = "bce", seq_len: int = 256, head: str = "last") -> RewardModel:
  """A fresh reward model whose backbone starts as a copy of `backbone_params` (a policy's
  weights: the paper initialises the reward model from the pretrained model) and whose head
  starts at zero (every score 0 before training). The copy matters: training donates its
  buffers and must never free the policy's."""
  if loss not in LOSSES:
    raise ValueError(f"reward model loss {loss!r}: expected one of {LOSSES}")
  if head not in HEADS:
    raise ValueError(f"reward model head {head!r}: expected one of {HEADS}")
  params = {"backbone": backbone_params,
            "head": _head_params(config.embed_dim, head, lambda s: jnp.zeros(s, jnp.float32))}
  sh = param_shardings(mesh, params)
  with jax.set_mesh(mesh):
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sh)(params)
  return RewardModel(config, graphdef, params, tokenizer,
                     {"loss": loss, "seq_len": int(min(seq_len, config.max_seq_len)),
                      "head": head})


def raw_scores_per_position(graphdef, params: dict, tokens_BxL):
  """The head's output [B, L] (float32) at every position: what it predicts having read the
  tokens up to and including that one."""
  model = nnx.merge(graphdef, params["backbone"])
  hidden_BxLxD, _ = model(tokens_BxL, return_hidden=True)
  head = params["head"]
  return hidden_BxLxD.astype(jnp.float32) @ head["w"].astype(jnp.float32) + head["b"]


def mean_completion_loglik(model, hidden_BxLxD, tokens_BxL, lengths_B, starts_B):
  """[B] mean log-probability of each row's completion tokens (index start .. length - 1)
  under the model's LM head; position p's logits predict token p + 1."""
  from rest_jax.training.step import chunked_token_nll
  nll_BxM = chunked_token_nll(model.config, model.output_weights(), hidden_BxLxD[:, :-1],
                              tokens_BxL[:, 1:], LOGLIK_CHUNK)
  target_M = jnp.arange(1, tokens_BxL.shape[1])
  mask_BxM = ((target_M[None] >= jnp.maximum(starts_B, 1)[:, None])
              & (target_M[None] < lengths_B[:, None])).astype(jnp.float32)
  return -(nll_BxM * mask_BxM).sum(1) / jnp.maximum(mask_BxM.sum(1), 1.0)


def raw_scores(graphdef, params: dict, tokens_BxL, lengths_B, starts_B=None):
  """The head's output [B] (float32) at each row's last real token (index length - 1); with
  `last+loglik`, plus `a` times the completion's mean log-probability (`starts_B`: each
  completion's first token)."""
  model = nnx.merge(graphdef, params["backbone"])
  hidden_BxLxD, _ = model(tokens_BxL, return_hidden=True)
  idx = jnp.clip(lengths_B - 1, 0, tokens_BxL.shape[1] - 1)
  last_BxD = jnp.take_along_axis(hidden_BxLxD, idx[:, None, None], axis=1)[:, 0]
  head = params["head"]
  out = last_BxD.astype(jnp.float32) @ head["w"].astype(jnp.float32) + head["b"]
  if "a" in head:
    starts_B = jnp.zeros_like(lengths_B) if starts_B is None else starts_B
    out = out + head["a"] * mean_completion_loglik(model, hidden_BxLxD, tokens_BxL, lengths_B,
                                                   starts_B)
  return out


def transform(raw, loss: str):
  """Raw head output -> the score users see (probability for `bce`)."""
  return jax.nn.sigmoid(raw) if loss == "bce" else raw


def encode_pair(tokenizer, prompt: str, completion: str, max_len: int) -> list[int]:
  """`[bos] + prompt + completion + [eos]`, keeping the last `max_len` tokens."""
  return encode_pair_with_start(tokenizer, prompt, completion, max_len)[0]


def encode_pair_with_start(tokenizer, prompt: str, completion: str,
                           max_len: int) -> tuple[list[int], int]:
  """`encode_pair`, and the index of the completion's first token in it (0 when the prompt
  was cut away entirely)."""
  head = sft_lib.encode_prompt(tokenizer, prompt)
  ids = head + sft_lib.encode_completion(tokenizer, completion)
  cut = max(0, len(ids) - max_len)
  return ids[cut:], max(0, len(head) - cut)


def bucket_len(n: int, cap: int) -> int:
  """Padded length: the next power of two (at least 32), at most `cap`: few compilations."""
  b = 32
  while b < n:
    b *= 2
  return min(b, cap)


def pad_batch(seqs: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
  """(tokens [rows, length] int32, lengths [rows] int32); missing rows have length 1."""
  tokens = np.full((rows, length), pad_id, np.int32)
  lengths = np.ones((rows,), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
    lengths[i] = max(1, len(s))
  return tokens, lengths


class RewardScorer:
  """Scores (prompt, completion) pairs in batches with one jitted, explicitly sharded function.

  Batches are sorted by length (less padding), padded to a multiple of the devices on the
  batch axes and to a power-of-two length, and split over `batch` like the sampler's rows.
  """

  def __init__(self, rm: RewardModel, mesh, *, batch_size: int = 64):
    self.rm = rm
    self.mesh = mesh
    shards = mesh_lib.batch_shards(mesh)
    self.batch_size = max(shards, -(-batch_size // shards) * shards)
    self._fns: dict = {}

  def _fn(self, length: int):
    if length not in self._fns:
      rm = self.rm
      fn = jax.jit(lambda p, t, n, s: transform(raw_scores(rm.graphdef, p, t, n, s), rm.loss),
                   in_shardings=(param_shardings(self.mesh, rm.params),
                                 mesh_lib.batch_sharding(self.mesh, 2),
                                 mesh_lib.batch_sharding(self.mesh, 1),
                                 mesh_lib.batch_sharding(self.mesh, 1)),
                   out_shardings=mesh_lib.batch_sharding(self.mesh, 1))
      self._fns[length] = fn
    return self._fns[length]

  def score_tokens(self, seqs: Sequence[Sequence[int]], desc: str | None = "score",
                   starts: Sequence[int] | None = None) -> np.ndarray:
    """Scores of token sequences; `starts[i]`: the first completion token of `seqs[i]` (what
    a `last+loglik` head averages over; default 0, the whole sequence)."""
    starts_all = np.zeros((len(seqs),), np.int32) if starts is None else np.asarray(
        starts, np.int32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.zeros((len(seqs),), np.float32)
    pad = self.rm.tokenizer.pad_id if self.rm.tokenizer.pad_id is not None else 0
    bar = tqdm(total=len(seqs), desc=desc, unit="sample", leave=False, disable=desc is None)
    for start in range(0, len(order), self.batch_size):
      idx = order[start:start + self.batch_size]
      batch = [seqs[i] for i in idx]
      length = bucket_len(max(len(s) for s in batch), self.rm.seq_len)
      tokens, lengths = pad_batch(batch, length, self.batch_size, pad)
      starts_b = np.zeros((self.batch_size,), np.int32)
      starts_b[:len(idx)] = starts_all[idx]
      with jax.set_mesh(self.mesh):
        scores = self._fn(length)(self.rm.params, tokens, lengths, starts_b)
      out[idx] = np.asarray(jax.device_get(scores))[:len(idx)]
      bar.update(len(idx))
    bar.close()
    return out

  def score(self, prompts: Sequence[str], completions: Sequence[str],
            desc: str | None = "score") -> np.ndarray:
    """[N] float32 scores of `completions[i]` as an answer to `prompts[i]`."""
    if len(prompts) != len(completions):
      raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    tok = self.rm.tokenizer
    encoded = [encode_pair_with_start(tok, p, c, self.rm.seq_len)
               for p, c in zip(prompts, completions)]
    return self.score_tokens([ids for ids, _ in encoded], desc, [st for _, st in encoded])


# ----------------------------------------------------------------------------- checkpoints

def save(rm: RewardModel, directory, *, source: str = "") -> str:
  """Writes `rm` as checkpoint 0 of `directory` (replacing a half-written one) and waits."""
  directory = epath.Path(directory)
  if directory.exists():
    # A run killed after the commit but before its state mark leaves step 0 behind.
    directory.rmtree()
  meta = {"model_config": loading.config_to_dict(rm.config),
          "tokenizer": tokenizers_lib.to_json_dict(rm.tokenizer),
          "model_source": source, "reward_model": rm.meta}
  with ckpt_lib.CheckpointManager(directory) as m:
    m.save(0, params=rm.params, meta=meta)
    m.wait()
  return str(directory)


def _step_dir(path) -> tuple[epath.Path, int]:
  """(manager directory, step) for a step directory or a directory of steps (the latest)."""
  p = epath.Path(path)
  if (p / "params").exists() and (p / "meta").exists() and p.name.isdigit():
    return p.parent, int(p.name)
  steps = [int(c.name) for c in p.iterdir() if c.name.isdigit()
           and (c / "params").exists()] if p.is_dir() else []
  if not steps:
    raise WeightsError(f"{path}: not a reward model checkpoint (no step directory with "
                       "params/ and meta/); train one with `rest-jax train-rm`")
  return p, max(steps)


def load(path, mesh) -> RewardModel:
  """A reward model checkpoint written by `save` (or `rest-jax train-rm`), onto `mesh`."""
  directory, step = _step_dir(path)
  meta_path = directory / str(step) / "meta" / "metadata"
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise WeightsError(f"{meta_path}: cannot read the checkpoint's meta item: {e}") from e
  if "reward_model" not in meta:
    raise WeightsError(f"{path}: a checkpoint, but not of a reward model (its meta has no "
                       "'reward_model'; policy checkpoints go in --model / LoopConfig.model)")
  cfg = loading.config_from_dict(meta["model_config"])
  tokenizer = tokenizers_lib.from_json_dict(meta["tokenizer"])
  graphdef, backbone = params_lib.abstract_params(cfg)
  params = {"backbone": backbone,
            "head": _head_params(cfg.embed_dim, meta["reward_model"].get("head", "last"),
                                 lambda s: jax.ShapeDtypeStruct(s, jnp.float32))}
  with ckpt_lib.CheckpointManager(directory) as m:
    try:
      restored = m.restore_params(step, abstract(mesh, params))
    except (KeyError, ValueError) as e:
      raise WeightsError(f"{path}: cannot restore the reward model: {e}") from e
  return RewardModel(cfg, graphdef, restored, tokenizer, dict(meta["reward_model"]))
