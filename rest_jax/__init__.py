"""rest_jax: ReST-EM and ReST, reinforced self-training of language models, in JAX/Flax."""

__version__ = "0.1.0"
