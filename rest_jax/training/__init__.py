"""Training: the loss, the optimizer, the sharded train step, the train state, and Improve.

* `step`: masked completion NLL, AdamW, the jitted train step with donation;
* `state`: `TrainState` and its shardings, created directly on the mesh;
* `improve`: the Improve phase (fine-tune given params on examples, resumable mid-way).

May import: models, tasks, tokenizers, runtime. Never sampling (nor anything above).
"""

from rest_jax.training.improve import ImproveConfig
from rest_jax.training.state import TrainState, create_state
from rest_jax.training.step import make_optimizer, make_train_step

__all__ = ["ImproveConfig", "TrainState", "create_state", "make_optimizer", "make_train_step"]
