"""The loop: the only place that knows the order of phases.

* `rest_em`: ReST-EM as a resumable state machine (Generate, Filter, Improve, Evaluate);
* `rest`: the original ReST (one Grow, several Improve steps at rising thresholds);
* `rest_schedule`: ReST's thresholds, kept sets and loss weights;
* `generate`: Generate + Verify over problems, in shards written atomically;
* `filtering`, `evaluation`, `report`: what an iteration keeps, how accuracy is measured,
  and `report.md` / `report.png`;
* `evaluate_model`: one model on one split (the Evaluate step, and `rest-jax eval`);
* `summary`: what a run concludes from its workdir (the best iteration against the base and
  the SFT baseline, with paired intervals; the top-level `metrics.json`);
* `adaptive_sampling`: Generate in rounds under a token budget (`LoopConfig.adaptive_rounds`);
* `run`: the gin-configured entry point of `rest-jax run`.

May import: every package below it (rewards, sampling, training, models, tasks, tokenizers,
verifiers, runtime). Nothing below imports it.
"""

from rest_jax.loop.rest import ReSTConfig, ReSTLoop
from rest_jax.loop.rest_em import ConfigChangedError, Loop, LoopConfig

__all__ = ["ConfigChangedError", "Loop", "LoopConfig", "ReSTConfig", "ReSTLoop"]
