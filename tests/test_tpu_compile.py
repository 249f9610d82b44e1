"""Programs compiled for a real TPU slice on this CPU machine (libtpu, compile only).

See ../shared/TPU_COMPILE_ONLY.md: `jax.experimental.topologies` gives the devices of a slice,
and a mesh over them compiles with the real TPU compiler, which reports per-chip memory.
"""

import os

# libtpu serves compilation only here; another process may hold it too.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from rest_jax.runtime import tpu_slices  # noqa: E402

from rest_jax.models import params as params_lib  # noqa: E402
from rest_jax.models.config import ModelConfig, gemma3_local_layers  # noqa: E402
from rest_jax.runtime import mesh as mesh_lib  # noqa: E402
from rest_jax.training import state as state_lib  # noqa: E402
from rest_jax.training import step as training  # noqa: E402

B, T = 8, 2048


def _compiled_train_step(mesh, attention: str):
  """The Improve train step (bf16 compute, f32 AdamW state, remat) of a Gemma-3-shaped model
  with sliding-window and global layers and GQA, compiled for `mesh`."""
  cfg = ModelConfig(family="gemma3", vocab_size=4096, num_layers=2, embed_dim=512, num_heads=8,
                    num_kv_heads=4, head_dim=128, mlp_dim=1024, max_seq_len=T,
                    norm_scale_offset=1.0, qk_norm=True, post_norms=True, sliding_window=512,
                    local_layers=gemma3_local_layers(2, 2), dtype="bfloat16",
                    attention=attention)
  graphdef, abstract = params_lib.abstract_params(cfg, remat=True)
  opt = training.make_optimizer()
  state = state_lib.abstract_state(mesh, abstract, opt)
  step = training.make_train_step(graphdef, opt, state_lib.state_shardings(mesh, abstract, opt),
                                  mesh)
  sh = mesh_lib.batch_sharding(mesh, 2)
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "decoder_loss_weights"
                                   else jnp.int32, sharding=sh) for k in training.BATCH_KEYS}
  # conftest asks for 'highest' matmul precision (exact CPU comparisons); Mosaic refuses it
  # for bf16 operands, and TPU programs run at the default.
  with jax.default_matmul_precision("default"):
    return step.lower(state, batch).compile()


def test_splash_attention_in_the_tpu_train_step_and_the_memory_it_saves():
  mesh = mesh_lib.create_mesh((1, 4, 1), devices=tpu_slices.parse("v5e-4").devices())
  assert mesh.devices.flat[0].platform == "tpu"
  xla = _compiled_train_step(mesh, "xla")
  auto = _compiled_train_step(mesh, "auto")       # on a TPU mesh: splash
  # Mosaic kernels appear as TPU custom calls: forward and backward, for both layer kinds.
  assert xla.as_text().count("tpu_custom_call") == 0
  assert auto.as_text().count("tpu_custom_call") >= 4
  # The [batch, heads, T, T] float32 scores are no longer materialised.
  temp_xla = xla.memory_analysis().temp_size_in_bytes
  temp_splash = auto.memory_analysis().temp_size_in_bytes
  assert temp_splash < 0.5 * temp_xla, (temp_splash, temp_xla)
