"""Sampling: K completions per prompt from the model's own sharded parameters.

* `sampler`: `Sampler`, the jitted prefill / insert / decode programs over a KV cache;
* `scheduler`: the host side (continuous batching: which sample goes into which slot);
* `forward`: the prefill and decode-step forward passes over `(graphdef, params)`;
* `filters`: temperature, top-k and top-p draws;
* `settings`: `SamplingParams`, length buckets; `slots`: the slots' state on the device.

May import: models, runtime. Never training (nor anything above).
"""

from rest_jax.sampling.sampler import Sampler
from rest_jax.sampling.settings import SamplingParams, sampling_params
from rest_jax.sampling.scheduler import Completion

__all__ = ["Completion", "Sampler", "SamplingParams", "sampling_params"]
