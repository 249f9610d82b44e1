"""The Improve step: fine-tune given params on SFT examples, resumable mid-way.

Restart-from-base or warm-start is the caller's choice of `init_params`. Progress is
checkpointed every `checkpoint_every` steps (train state + data iterator position), so a
killed run resumes at the same step with the same batches and gets the same params; after
SIGTERM the phase checkpoints the step it is at and stops (`rest_jax.runtime.preemption`). With several
processes each feeds its slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Sequence

import gin
import jax
from tqdm.auto import tqdm

from rest_jax.runtime import checkpoints as ckpt_lib
from rest_jax.runtime import distributed as dist
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.runtime import preemption
from rest_jax.training import state as state_lib
from rest_jax.training import step as training
from rest_jax.tasks import sft as sft_lib
from rest_jax.tasks.sft_iterator import SFTIterator

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ImproveConfig:
  """Budget and batching of one Improve phase.

  steps: exact number of optimizer steps; when None, `epochs` passes over the packed rows
    (at least `min_steps`, at most `max_steps`).
  loss_chunk_len: the loss computes the output logits this many positions at a time, so a
    large vocabulary's [rows, seq_len, vocab] logits never exist whole (`chunked_token_nll`;
    one more pass of the output projection). None: whole rows.
  """

  steps: int | None = None
  epochs: float = 2.0
  min_steps: int = 10
  max_steps: int = 100_000
  batch_size: int = 16
  seq_len: int = 256
  accum_steps: int = 1
  loss_chunk_len: int | None = 256
  checkpoint_every: int = 50
  # 'numpy' packs without TensorFlow; 'seqio' runs seqio's feature converter (identical rows,
  # tested in tests/test_tasks_sft.py).
  packer: str = "numpy"


def num_steps(cfg: ImproveConfig, num_rows: int) -> int:
  if cfg.steps is not None:
    return cfg.steps
  steps = math.ceil(cfg.epochs * num_rows / cfg.batch_size)
  return int(min(cfg.max_steps, max(cfg.min_steps, steps)))


_STEPS: dict = {}


def _train_step(graphdef, params, mesh, steps: int, accum_steps: int,
                loss_chunk_len: int | None = None):
  """(optimizer, state shardings, step fn), built once per budget and gin scope: later Improve
  phases of the same length reuse the compiled step (a scope may set its own optimizer)."""
  key = (graphdef, mesh, steps, accum_steps, loss_chunk_len, gin.current_scope_str())
  if key not in _STEPS:
    optimizer = training.make_optimizer(total_steps=steps)
    shardings = state_lib.state_shardings(mesh, params, optimizer)
    _STEPS[key] = (optimizer, shardings,
                   training.make_train_step(graphdef, optimizer, shardings, mesh, accum_steps,
                                            loss_chunk_len))
  return _STEPS[key]


def improve(*, name: str, graphdef, init_params, examples: Sequence, tokenizer, mesh,
            checkpoint_dir, seed: int, cfg: ImproveConfig | None = None, metrics_log=None,
            log_step_offset: int = 0, process_index: int = 0, process_count: int = 1):
  """Trains from `init_params` on `examples`; returns (params, stats)."""
  cfg = cfg or ImproveConfig()
  if not examples:
    raise ValueError(f"{name}: no examples to train on")
  packed = sft_lib.pack_sft_examples(examples, tokenizer, cfg.seq_len, shuffle_seed=seed,
                                     backend=cfg.packer)
  if packed.num_rows == 0:
    raise ValueError(f"{name}: every example is longer than seq_len={cfg.seq_len}")
  data = SFTIterator(packed.arrays, cfg.batch_size, seed=seed, process_index=process_index,
                     process_count=process_count)
  steps = num_steps(cfg, packed.num_rows)
  optimizer, shardings, step_fn = _train_step(graphdef, init_params, mesh, steps,
                                              cfg.accum_steps, cfg.loss_chunk_len)

  manager = ckpt_lib.CheckpointManager(checkpoint_dir, max_to_keep=1)
  start = manager.latest_step()
  if start is not None:
    meta = manager.meta(start)
    if meta.get("data_fingerprint") != data.fingerprint:
      raise RuntimeError(f"{name}: the training data differs from the checkpoint's in "
                         f"{checkpoint_dir}; delete that directory to restart this phase")
    state = manager.restore_state(start, state_lib.abstract_state(mesh, init_params, optimizer))
    data.restore(meta["data"])
    log.info("%s: resumed at step %d of %d", name, start, steps)
  else:
    state = state_lib.create_state(mesh, init_params, optimizer)
    start = 0

  t0 = time.time()
  loss = float("nan")
  bar = tqdm(total=steps, initial=start, desc=f"{name} train", unit="step", leave=False,
             disable=process_index != 0)
  to_global = lambda b: dist.global_batch(b, lambda nd: mesh_lib.batch_sharding(mesh, nd))
  save = lambda n: manager.save_state(n, state, meta={"data": data.state(),
                                                      "data_fingerprint": data.fingerprint})
  for step in range(start, steps):
    state, metrics = step_fn(state, to_global(next(data)))
    saved = (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps
    if saved:
      save(step + 1)
    if step + 1 < steps and dist.any_process(preemption.requested()):
      if not saved:
        save(step + 1)   # the safe point: this step's state, so a rerun loses nothing
      manager.wait()
      manager.close()
      bar.close()
      raise preemption.Preempted(f"{name}, after train step {step + 1} of {steps}")
    if (step + 1) % 10 == 0 or step + 1 == steps:
      m = jax.device_get(metrics)
      loss = float(m["loss"])
      bar.set_postfix(loss=f"{loss:.3f}")
      if metrics_log is not None:
        metrics_log.write(log_step_offset + step + 1, {"loss": loss,
                                                       "grad_norm": m["grad_norm"]},
                          phase=name)
    bar.update(1)
  bar.close()
  manager.wait()
  manager.close()
  seconds = time.time() - t0
  stats = {"steps": steps, "rows": packed.num_rows, "examples": packed.num_examples,
           "dropped_overlong": len(packed.dropped), "loss_tokens": packed.num_loss_tokens,
           "final_loss": loss, "seconds": round(seconds, 2),
           "steps_per_s": round((steps - start) / max(seconds, 1e-9), 2)}
  return state.params, stats
