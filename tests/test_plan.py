"""`rest-jax plan`: a run's programs compiled for TPU slices on this CPU machine (libtpu)."""

import json
import os
import subprocess
import sys

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rest_jax import cli  # noqa: E402
from rest_jax.runtime import tpu_slices  # noqa: E402


def _plan(capsys, *flags):
  code = cli.main(["plan", "--gin_file=runs/demo.gin", "--json", *flags])
  out = capsys.readouterr()
  return code, out


# Generate's programs, and the greedy evaluation's decode (one slot per prompt: its own layout).
PROGRAMS = {"train_step", "serving_layout", "prefill", "insert", "decode", "decode_greedy"}


def test_demo_fits_on_v5e_8_and_reports_every_program(capsys):
  code, out = _plan(capsys, "--topology=v5e-8")
  assert code == 0, out.err
  plan = json.loads(out.out)
  assert plan["fits"] and plan["chips"] == 8 and plan["topology_name"] == "v5e:2x4"
  progs = {p["name"]: p for p in plan["programs"]}
  assert set(progs) == PROGRAMS
  for p in progs.values():
    assert 0 < p["per_chip_bytes"] < p["usable_bytes"] == pytest.approx(15.75 * 2**30)
  train = progs["train_step"]
  assert "all-gather" in train["collectives"]          # FSDP over the 8 chips
  assert 0 < train["estimate"]["mfu"] < 0.9
  assert progs["decode"]["estimate"]["tokens_per_s_per_chip"] > 0


def test_smollm2_arithmetic_fits_on_v5e_8(capsys):
  """The shipped SmolLM2 config (shapes from the GGUF header; no weight is read)."""
  code = cli.main(["plan", "--gin_file=runs/smollm2_arithmetic.gin", "--gin.WORKDIR='unused'",
                   "--topology=v5e-8", "--json"])
  out = capsys.readouterr()
  assert code == 0, out.err[-2000:]
  plan = json.loads(out.out)
  assert plan["fits"] and plan["model"] == "smollm2-135m"
  assert {p["name"] for p in plan["programs"]} == PROGRAMS
  assert all(0 < p["per_chip_bytes"] < p["usable_bytes"] for p in plan["programs"])


def test_qwen3_1_7b_fits_on_v5e_8(capsys):
  """Qwen3 1.7B on 8 v5e chips with the math template: the train step fits because the loss
  computes the 152k-entry logits 256 positions at a time (whole rows need 16.4 GiB of 15.8)."""
  code = cli.main(["plan", "--gin_file=runs/rest_em_math.gin", "--gin.BASE_MODEL='qwen3-1.7b'",
                   "--gin.TASK='gsm8k'", "--gin.MESH=(1, -1, 1)", "--gin.WORKDIR='unused'",
                   "--topology=v5e-8", "--json", "--no_suggest"])
  out = capsys.readouterr()
  assert code == 0, out.err[-2000:]
  plan = json.loads(out.out)
  assert plan["fits"] and plan["model"] == "qwen3-1.7b" and plan["params"] == 1_720_574_976
  assert {p["name"] for p in plan["programs"]} == PROGRAMS
  assert all(0 < p["per_chip_bytes"] < p["usable_bytes"] for p in plan["programs"])


def test_parameter_and_optimizer_memory_agree_with_the_shardings():
  """The compiled train step's arguments are the train state's shards plus the batch's (dims
  chosen as multiples of the TPU's (8, 128) tiles, so layout padding does not blur it)."""
  from rest_jax.loop import plan as plan_lib
  from rest_jax.models.config import ModelConfig
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.training import state as state_lib
  from rest_jax.training import step as training
  slice_ = tpu_slices.parse("v5e-8")
  mesh = mesh_lib.create_mesh((1, -1, 1), slice_.devices())
  cfg = ModelConfig(family="llama", vocab_size=4096, num_layers=8, embed_dim=1024, num_heads=8,
                    num_kv_heads=8, head_dim=128, mlp_dim=2048, max_seq_len=512)
  graphdef, params = plan_lib._abstract_params(cfg, mesh)  # pylint: disable=protected-access
  train = plan_lib.plan_train(cfg, graphdef, params, mesh, slice_, batch=16, seq=512, accum=1)
  state = state_lib.abstract_state(mesh, params, training.make_optimizer())
  shard_bytes = lambda x: np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
  expected = (sum(shard_bytes(x) for x in jax.tree.leaves(state))
              + len(training.BATCH_KEYS) * 16 * 512 * 4 / 8)
  assert train.fits
  assert train.argument_bytes == pytest.approx(expected, rel=0.03)


def test_two_slices_compile_with_data_parallelism_across_them(capsys):
  code, out = _plan(capsys, "--topology=v5e-4", "--num_slices=2")
  assert code == 0, out.err
  plan = json.loads(out.out)
  assert plan["chips"] == 8 and plan["mesh"]["data"] == 2 and plan["fits"]


@pytest.mark.parametrize("name,expect", [
    ("v5e-12", "valid v5e slices are v5e-1, v5e-4, v5e-8"),
    ("v5e:4x4x4", "v5e topologies are 2-D"),
    ("tpu-8", "expected a gcloud accelerator type"),
    ("v9-8", "unknown TPU generation"),
])
def test_a_bad_topology_is_one_line_and_exit_2(capsys, name, expect):
  code, out = _plan(capsys, f"--topology={name}")
  assert code == 2
  lines = out.err.strip().splitlines()
  assert len(lines) == 1 and expect in lines[0], out.err


def test_gcloud_names_map_to_topologies():
  assert tpu_slices.parse("v5p-128").topology_name == "v5p:4x4x4"
  assert tpu_slices.parse("v5litepod-16").topology_name == "v5e:4x4"
  assert tpu_slices.parse("v4-32").topology_name == "v4:2x2x4"
  assert tpu_slices.parse("v6e-64").topology_name == "v6e:8x8"
  assert tpu_slices.parse("v4-32").hosts == 4 and tpu_slices.parse("v5e-8").hosts == 1


def test_the_planned_sampler_programs_are_the_ones_generate_compiles():
  """No second code path: `Sampler.plan` compiles what a real `generate` compiles."""
  from rest_jax.models import PRESETS, init_params
  from rest_jax.runtime import mesh as mesh_lib
  from rest_jax.sampling.sampler import Sampler, SamplingParams
  from rest_jax.tokenizers import ByteTokenizer
  mesh = mesh_lib.create_mesh((1, 4, 2))
  cfg = PRESETS["tiny"]
  graphdef, params = init_params(cfg, mesh)
  sampling = SamplingParams(temperature=1.0, max_new_tokens=24)
  make = lambda: Sampler(graphdef, cfg, ByteTokenizer(vocab_size=cfg.vocab_size), mesh,
                         num_slots=8, max_prefill_batch=1)
  real, planned = make(), make()
  real.generate(params, [[5] * 40], num_samples=8, sampling=sampling, seed=0)
  planned.plan(params, prompt_len=40, num_samples=8, sampling=sampling)
  programs = lambda s: sorted(d for d, _ in s.compilations if not d.startswith("zeros"))
  assert programs(planned) == programs(real)


def test_a_config_that_does_not_fit_is_refused_with_a_change_that_fits(capsys):
  """Activations of 384 x 2048 tokens of the tiny model do not fit one v5e chip; micro-batches
  do, and the suggested binding is checked by planning again with it."""
  big = ["--gin.LoopConfig.model='tiny'", "--gin.ImproveConfig.batch_size=384",
         "--gin.ImproveConfig.seq_len=2048"]
  code, out = _plan(capsys, "--topology=v5e-1", *big)
  assert code == 2
  plan = json.loads(out.out)
  train = next(p for p in plan["programs"] if p["name"] == "train_step")
  assert not train["fits"] and train["per_chip_bytes"] > train["usable_bytes"]
  line = out.err.strip().splitlines()[-1]
  assert "train_step needs" in line and "this fits: ImproveConfig.accum_steps=" in line, line
  fix = line.split("this fits: ")[1]
  code, out = _plan(capsys, "--topology=v5e-1", *big, f"--gin.{fix}")
  assert code == 0, out.err


def _plan_child(*flags):
  """`rest-jax plan` in its own process: libtpu compiles for one TPU generation per process."""
  r = subprocess.run([sys.executable, "-m", "rest_jax.cli", "plan", *flags], capture_output=True,
                     text=True, timeout=900, env={**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  return r.returncode, r.stdout, r.stderr


def test_a_two_host_slice_plans_both_sample_placements():
  """v5p-16 has 2 hosts: Generate is compiled on each host's own chips and on the global mesh,
  and the per-host replica holds more parameter bytes per chip than the global shards."""
  code, out, err = _plan_child("--gin_file=runs/demo.gin", "--topology=v5p-16", "--json")
  assert code == 0, err[-2000:]
  plan = json.loads(out)
  assert plan["hosts"] == 2 and plan["placements"] == {"per_host": True, "global": True}
  assert plan["sample_placement"] == "per_host"
  decode = {p["placement"]: p for p in plan["programs"] if p["name"] == "decode"}
  assert set(decode) == {"per_host", "global"}
  assert decode["per_host"]["argument_bytes"] > decode["global"]["argument_bytes"] > 0


MATH_8B = ["--gin_file=runs/rest_em_math.gin", "--gin.BASE_MODEL='llama3-8b'",
           "--gin.TASK='gsm8k'", "--gin.MESH=(1, -1, 1)"]


def test_llama3_8b_with_float32_adamw_on_v5e_4_is_refused_with_a_change_that_fits():
  """96 GB of float32 parameters and Adam moments cannot fit 4 x 16 GB; the suggested slice is
  one the planner compiled the train step for, in a child process, and saw fit (a suggestion
  is re-planned as given in test_a_config_that_does_not_fit_is_refused_with_a_change_that_fits;
  here that would compile the 8B train step a third time). The train step only: it is what
  does not fit, and compiling the 8B sampler too would double the time."""
  code, _, err = _plan_child(*MATH_8B, "--topology=v5e-4", "--only=train_step")
  assert code == 2, err[-2000:]
  line = err.strip().splitlines()[-1]
  assert line.startswith("rest-jax plan: does not fit on v5e-4: train_step needs "), line
  fix = line.split("this fits: ")[1]
  chips = int(fix.removeprefix("--topology=v5e-").split()[0])
  assert fix.startswith("--topology=v5e-") and chips > 4, line


def test_qwen3_8b_fits_on_v5p_64_with_both_sample_placements():
  """An 8B model on a pod: Qwen3's (QK-norm, head size 128, untied 152k vocabulary) as
  BENCHMARKS.md's pod-plans rows run it; llama3-8b's plan is the refused one above."""
  code, out, err = _plan_child(*MATH_8B, "--gin.BASE_MODEL='qwen3-8b'", "--topology=v5p-64",
                               "--json", "--no_suggest")
  assert code == 0, err[-2000:]
  plan = json.loads(out)
  assert plan["fits"] and plan["hosts"] == 8 and plan["chips"] == 32
  assert plan["placements"] == {"per_host": True, "global": True}
  train = next(p for p in plan["programs"] if p["name"] == "train_step")
  assert 0.45 <= train["estimate"]["mfu"] < 0.9     # the aim, and below a broken estimate


def _sampler_plan(slots_or_rows: int, per_unit: float, fixed: float, name="decode"):
  """A one-host Plan whose sampler needs `fixed + per_unit * slots_or_rows` bytes per chip."""
  from rest_jax.loop import plan as plan_lib
  slice_ = tpu_slices.parse("v5e-8")
  need = fixed + per_unit * slots_or_rows
  return plan_lib.Plan("v5e-8", slice_, {}, "m", 1, [plan_lib.Program(
      name, need <= slice_.chip.usable_hbm, need, slice_.chip.usable_hbm)])


@pytest.mark.parametrize("failing,key", [("decode", "LoopConfig.sampler_slots"),
                                         ("decode_greedy", "Sampler.prompt_rows")])
def test_the_largest_sampler_setting_that_fits_is_found(monkeypatch, failing, key):
  """Memory grows linearly with slots (Generate) or prompt rows (the greedy evaluation): the
  search follows the line through two compiled sizes and confirms the value it points to."""
  import gin
  from rest_jax.loop import plan as plan_lib
  from rest_jax.loop import plan_suggest
  gin.bind_parameter("LoopConfig.sampler_slots", 4096)
  gin.bind_parameter("LoopConfig.num_samples", 32)
  usable = tpu_slices.parse("v5e-8").chip.usable_hbm
  per_unit, fixed = 5e6, 2e9
  largest = int((usable - fixed) // per_unit)                  # 2,749
  probes = []

  def fake_plan_run(topology, num_slices, only=None):
    value = gin.query_parameter(key)
    probes.append(value)
    return _sampler_plan(value, per_unit, fixed, failing)

  monkeypatch.setattr(plan_lib, "plan_run", fake_plan_run)
  found = plan_suggest.largest_sampler_setting("v5e-8", 1, _sampler_plan(4096, per_unit, fixed,
                                                                     failing))
  name, value = found.split("=")
  unit = 16 if key == "LoopConfig.sampler_slots" else 1
  assert name == key and int(value) % unit == 0
  assert largest - 0.03 * largest <= int(value) <= largest, (found, probes)
  assert len(probes) <= 4, probes
  assert gin.query_parameter("LoopConfig.sampler_slots") == 4096     # put back
