"""Programs compiled for a real TPU slice on this CPU machine (libtpu, compile only).

See ../shared/TPU_COMPILE_ONLY.md: `jax.experimental.topologies` gives the devices of a slice,
and a mesh over them compiles with the real TPU compiler, which reports per-chip memory.
"""

import os

# libtpu serves compilation only here; another process may hold it too.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
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


@pytest.mark.parametrize("topology,kv_heads_per_chip", [("v5e-8", 1), ("v5e-4", 2)])
def test_decode_gathers_no_weight_and_holds_one_copy_of_its_caches(topology, kv_heads_per_chip):
  """Generate's decode of a Llama-3-8B-wide model (2 of its layers) on v5e-8 and v5e-4: 512
  slots in groups of 16 over 2,048-token prompts and 512-token completions, in the serving
  layout (8 KV heads over 8 or 4 chips).

  Every weight matrix has an `embed` dimension; the decode's legitimate gathers (logits split
  over the vocabulary, per-slot scalars) have none, so an all-gather with one is a weight moving.
  The temporaries stay under a quarter of the program's per-chip memory: no second copy of the
  completion cache or the prompt store."""
  from rest_jax.loop import hlo_collectives
  from rest_jax.models import PRESETS
  from rest_jax.sampling.sampler import Sampler, SamplingParams
  from rest_jax.tokenizers import ByteTokenizer
  cfg = PRESETS["llama3-8b"].replace(num_layers=2, dtype="bfloat16")
  mesh = mesh_lib.create_mesh((1, -1, 1), devices=tpu_slices.parse(topology).devices())
  graphdef, abstract = params_lib.abstract_params(cfg)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, params_lib.shardings(mesh, abstract))
  sampler = Sampler(graphdef, cfg, ByteTokenizer(vocab_size=cfg.vocab_size), mesh,
                    num_slots=512, cache_dtype="bfloat16")
  chips = mesh.devices.size
  assert dict(sampler.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": chips}
  assert cfg.num_kv_heads // chips == kv_heads_per_chip
  with jax.default_matmul_precision("default"):
    compiled = sampler.plan(params, prompt_len=2048, num_samples=32,
                            sampling=SamplingParams(temperature=0.7, top_k=40,
                                                    max_new_tokens=512))
  assert sampler.stats["slots"] == 512 and sampler.stats["group_size"] == 16
  decode = compiled["decode"]
  mem = decode.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  assert mem.temp_size_in_bytes <= 0.25 * total, (mem.temp_size_in_bytes, total)
  found, unknown = hlo_collectives.collectives(decode.as_text(), chips)
  assert not unknown and found
  gathers = [c for c in found if c.kind == "all-gather"]
  assert not [c for c in gathers if cfg.embed_dim in c.shape], gathers
  # The training layout's move to the serving layout happens once, outside decode.
  assert "serving_layout" in compiled
