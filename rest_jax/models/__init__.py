"""Model configs, the NNX transformer, and helpers over its parameter state."""

from rest_jax.models.config import PRESETS, ModelConfig, RopeScaling
from rest_jax.models.params import abstract_params, init_params, logical_axes, param_count
from rest_jax.models.transformer import KVCache, Transformer

__all__ = [
    "PRESETS", "ModelConfig", "RopeScaling", "KVCache", "Transformer",
    "abstract_params", "init_params", "logical_axes", "param_count",
]
