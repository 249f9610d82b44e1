"""Which of a task's problems each part of a run uses, from `LoopConfig` (`cfg`) alone.

The loop and `rest-jax eval` both choose through here, so an evaluation of a run's checkpoint
on `--split train` or `--split val` sees exactly the prompts behind the run's figures.

* training prompts: what Generate samples on; validation prompts: the `num_val_prompts`
  training problems after them, never sampled, which pick the best iteration;
* human problems: the first `num_human_solutions` training prompts with a human solution
  (the base SFT's and the SFT baseline's data);
* "train" evaluation prompts: training prompts whose human solution neither of those saw.
"""

from __future__ import annotations


def train_and_val(task_train: list, cfg) -> tuple[list, list]:
  """(training prompts, validation prompts) from the task's training problems: disjoint, and
  the same on every rerun (see `LoopConfig.num_val_prompts`)."""
  probs = list(task_train)
  nv = cfg.num_val_prompts
  if nv < 0:
    raise ValueError(f"LoopConfig.num_val_prompts must be >= 0, got {nv}")
  if cfg.num_train_prompts is None:
    train, val = probs[:len(probs) - nv], probs[len(probs) - nv:]
  else:
    train = probs[:cfg.num_train_prompts]
    val = probs[cfg.num_train_prompts:cfg.num_train_prompts + nv]
  if len(val) < nv or (nv and not train):
    raise ValueError(
        f"task {cfg.task!r} has {len(probs)} training problems: too few for "
        f"num_train_prompts={cfg.num_train_prompts} and num_val_prompts={nv}")
  return train, val


def human_problems(train: list, cfg) -> list:
  return [p for p in train if p.solution][:cfg.num_human_solutions]


def train_eval_problems(train: list, cfg, limit: int | None = None) -> list:
  """The "train" evaluation prompts (all training prompts when every one has a solution the
  base saw); the first `limit`, default `num_eval_train_prompts`."""
  seen = ({p.id for p in human_problems(train, cfg)} if (cfg.base_sft_steps or cfg.sft_baseline)
          else set())
  unseen = [p for p in train if p.id not in seen]
  return (unseen or train)[:cfg.num_eval_train_prompts if limit is None else limit]
