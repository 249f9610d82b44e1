"""Rewards for the original ReST: where a sample's score comes from, and the reward model.

* `sources`: the reward sources of a Grow step (verifier, reward model, a Python callable);
* `graded`: built-in graded scores (the share of a program's hidden tests it passes);
* `model`: the reward model (the policy's transformer + a scalar head) and batched scoring;
* `training`: training it (BCE, MSE or pairwise Bradley-Terry);
* `data`: its training data from JSONL files or a run's workdir;
* `metrics`: ROC AUC and best-of-N.

May import: training, sampling, models, tasks, verifiers, tokenizers, runtime.
"""

from rest_jax.rewards.model import RewardModel, RewardScorer
from rest_jax.rewards.sources import RewardSourceError, make_reward_source
from rest_jax.rewards.training import RewardTrainConfig, RMExample

__all__ = ["RMExample", "RewardModel", "RewardScorer", "RewardSourceError",
           "RewardTrainConfig", "make_reward_source"]
