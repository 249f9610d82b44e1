"""The decode slots' state on the device, and what a slot's draws and stops depend on."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SlotState:
  """Per-slot decode state on the device."""

  token: jax.Array    # [S] int32: the last generated token, fed at `pos` next
  pos: jax.Array      # [S] int32
  step: jax.Array     # [S] int32: tokens generated so far (the index of the next draw)
  active: jax.Array   # [S] bool: still generating
  key: jax.Array      # [S, 2] uint32: raw key data of the sample's key

  @classmethod
  def empty(cls, slots: int) -> "SlotState":
    z = jnp.zeros((slots,), jnp.int32)
    return cls(z, z, z, jnp.zeros((slots,), bool), jnp.zeros((slots, 2), jnp.uint32))


def sample_keys(seed, pkeys, samples):
  """The key of sample `samples[i]` of the prompt with key `pkeys[i]`: its step t draws with
  `fold_in(key, t)`, whatever slot or batch it runs in."""
  base = jax.random.key(seed)
  return jax.vmap(lambda p, j: jax.random.fold_in(jax.random.fold_in(base, p), j))(pkeys, samples)


def is_stop(tok, stop_ids):
  """Whether each drawn token is one of `stop_ids` (padded with -1)."""
  return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
