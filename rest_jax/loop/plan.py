"""`rest-jax plan`: compile a run's programs for a TPU slice without one, and say what they need.

The programs are the run's own, built by the same functions at the same shapes: the Improve
train step (`training.improve._train_step`, at `ImproveConfig`'s batch, sequence length and
accumulation, with remat and the run's optimizer) and the sampler's prefill, insert and decode
programs (`Sampler.plan`, at `LoopConfig`'s slots and the cache length of the task's longest
prompt plus `max_new_tokens`). Shapes come from the model's config (preset, GGUF/HF header or
checkpoint meta); no weight is read. Each is compiled by the real TPU compiler (libtpu) against
the slice's devices, which reports per-chip memory, or refuses a program that does not fit.

Estimates (labelled so) use the published chip figures in `runtime/tpu_slices.py`:
  time >= max(FLOPs / peak, HBM bytes / bandwidth) + collective bytes / ICI bandwidth,
(the train step's FLOPs on the chip include the rematerialised forward pass),
with FLOPs and bytes counted analytically (XLA's cost analysis counts a layer scan's body
once) and collectives assumed not overlapped with compute, so the MFU estimate is a lower
bound of what the compiled program can reach, never an optimistic one.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from rest_jax.loop import hlo_collectives
from rest_jax.loop.rest_em import LoopConfig
from rest_jax.models import loading
from rest_jax.models import params as params_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.runtime import tpu_slices
from rest_jax.sampling.sampler import Sampler, SamplingParams
from rest_jax.training import improve
from rest_jax.training import state as state_lib
from rest_jax.training import step as training

_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute",
                "all-to-all")
_OOM = re.compile(r"total memory required[^(]*\(([\d.]+)([KMGT])")
GiB = 2 ** 30
_PER_HOST_SAMPLING = ("per-host sampling cannot compile on this slice: its programs must span "
                      "every chip (limited ICI routing); it needs sampling on the global mesh")


@dataclasses.dataclass
class Program:
  name: str
  fits: bool
  per_chip_bytes: float          # arguments + outputs - aliased + temporaries
  usable_bytes: float
  argument_bytes: float = 0.0
  temp_bytes: float = 0.0
  flops: float = 0.0             # per chip per call, analytic
  hbm_bytes: float = 0.0         # per chip per call, analytic lower bound
  collective_bytes: float = 0.0  # per chip per call: train analytic, sampler from its HLO
  collectives: dict = dataclasses.field(default_factory=dict)   # kind -> count in the HLO
  estimate: dict = dataclasses.field(default_factory=dict)
  error: str = ""
  placement: str = ""            # sampler programs on several hosts: 'per_host' or 'global'

  @property
  def label(self) -> str:
    return f"{self.name}/{self.placement}" if self.placement else self.name


@dataclasses.dataclass
class Plan:
  topology: str
  slice: tpu_slices.Slice
  mesh_shape: dict
  model: str
  params: int
  programs: list

  @property
  def placements(self) -> dict[str, bool]:
    """Sample placement -> whether all its programs fit (several hosts: both are compiled)."""
    out: dict[str, bool] = {}
    for p in self.programs:
      if p.name != "train_step":
        out[p.placement] = out.get(p.placement, True) and p.fits
    return out

  @property
  def sample_placement(self) -> str | None:
    """What `LoopConfig.sample_placement='auto'` should take here: per_host when it fits
    (no collectives while sampling), else global; None when neither fits."""
    fitting = [k for k, ok in self.placements.items() if ok]
    for k in ("per_host", "global", ""):
      if k in fitting:
        return k or "global"
    return None

  @property
  def fits(self) -> bool:
    train = all(p.fits for p in self.programs if p.name == "train_step")
    return train and (not self.placements or self.sample_placement is not None)

  @property
  def failing(self) -> list:
    """The programs that keep the run from fitting (a placement's only if none fits)."""
    sampler_ok = self.sample_placement is not None
    return [p for p in self.programs
            if not p.fits and (p.name == "train_step" or not sampler_ok)]


def _compile(lower_fn, usable: float) -> tuple:
  """(compiled or None, fits, per-chip bytes, error text)."""
  try:
    compiled = lower_fn().compile()
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
      raise
    return None, False, _oom_bytes(text), text.splitlines()[0][:300]
  mem = compiled.memory_analysis()
  need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  return compiled, need <= usable, float(need), ""


def _oom_bytes(text: str) -> float:
  """What the compiler's out-of-memory message says the program needs per chip."""
  m = _OOM.search(text)
  return (float(m.group(1)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]
          if m else float("nan"))


def _collective_counts(text: str) -> dict:
  return {k: len(re.findall(rf"\b{k}(?:-start)?\(", text)) for k in _COLLECTIVES
          if re.search(rf"\b{k}(?:-start)?\(", text)}


def _bytes_of(tree) -> float:
  return float(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _abstract_params(cfg, mesh):
  graphdef, abstract = params_lib.abstract_params(cfg, remat=True)
  sh = params_lib.shardings(mesh, abstract)
  return graphdef, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, sh)


def plan_train(cfg, graphdef, params, mesh, slice_, *, batch, seq, accum, loss_chunk_len=None,
               steps=1000):
  chip = slice_.chip
  _, shardings, step = improve._train_step(graphdef, params, mesh, steps, accum,  # pylint: disable=protected-access
                                           loss_chunk_len)
  opt = training.make_optimizer(total_steps=steps)
  state = state_lib.abstract_state(mesh, params, opt)
  sh = mesh_lib.batch_sharding(mesh, 2)
  data = {k: jax.ShapeDtypeStruct((batch, seq), jnp.float32 if k == "decoder_loss_weights"
                                  else jnp.int32, sharding=sh) for k in training.BATCH_KEYS}
  with jax.default_matmul_precision("default"):
    compiled, fits, need, err = _compile(lambda: step.lower(state, data), chip.usable_hbm)
  chips = mesh.devices.size
  tokens = batch * seq / chips
  n_matmul = cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim)
  flops = tokens * (6 * n_matmul + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq)
  param_bytes = _bytes_of(params)
  fsdp = mesh_lib.batch_shards(mesh)
  # FSDP: parameters gathered for the forward pass and again for the rematerialised backward
  # pass (compute dtype), gradients reduce-scattered (float32), each at (n - 1) / n per chip.
  compute_bytes = param_bytes * jnp.dtype(cfg.dtype).itemsize / jnp.dtype(cfg.param_dtype).itemsize
  coll = (2 * compute_bytes + param_bytes) * (fsdp - 1) / fsdp / mesh_lib.tensor_parallel_size(mesh)
  # A floor per chip: the forward, the rematerialised forward and the backward read the
  # parameters (3 passes); the update reads and writes parameters, gradients and both Adam
  # moments (8 passes).
  hbm = 11 * param_bytes / chips
  prog = Program("train_step", fits, need, chip.usable_hbm, flops=flops, hbm_bytes=hbm,
                 collective_bytes=coll, error=err)
  if compiled is not None:
    mem = compiled.memory_analysis()
    prog.argument_bytes, prog.temp_bytes = mem.argument_size_in_bytes, mem.temp_size_in_bytes
    prog.collectives = _collective_counts(compiled.as_text())
  # remat recomputes the forward pass in the backward pass: 8N per token on the chip, of which
  # the 6N of the model count towards MFU.
  t = max(flops * 4 / 3 / chip.peak_flops, hbm / chip.hbm_bandwidth) + coll / chip.ici_bandwidth
  prog.estimate = {"step_s": t, "mfu": flops / chip.peak_flops / t,
                   "tokens_per_s_per_chip": tokens / t}
  return prog


def _decode_estimate(prog: Program, exe, text: str, cfg, layout: dict, steps: int, chips: int,
                     chip):
  """Per-step figures of a compiled decode program: it reads its arguments (the weights in
  the serving layout, each live prompt's row once, the completion caches) and moves the
  collective bytes its HLO holds (loop bodies times their trip counts)."""
  slots, prompt, new = layout["slots"], layout["store_len"], layout["cache_len"]
  n_matmul = cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim)
  attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * slots * (prompt + new)
  flops = (2 * n_matmul * slots + attention) / chips
  hbm = float(exe.memory_analysis().argument_size_in_bytes)
  coll = hlo_collectives.traffic_by_kind(text, chips)
  coll_step = sum(coll.values()) / steps
  t = max(flops / chip.peak_flops, hbm / chip.hbm_bandwidth) + coll_step / chip.ici_bandwidth
  prog.flops, prog.hbm_bytes, prog.collective_bytes = flops * steps, hbm * steps, coll_step * steps
  prog.estimate = {"step_s": t, "tokens_per_s_per_chip": slots / t / chips,
                   "hbm_bytes_per_step": hbm, "collective_bytes_per_step": coll_step,
                   "collective_bytes_by_kind": {k: v / steps for k, v in coll.items()},
                   **layout}


def plan_sampler(cfg, graphdef, params, mesh, slice_, tokenizer, *, slots, prompt_len,
                 max_new_tokens, num_samples, cache_dtype, placement: str = ""):
  """The sampler's programs for Generate (K = `num_samples`) and, when its layout differs, the
  decode of the greedy evaluation (K = 1: one slot per prompt, the most prompt rows)."""
  chip = slice_.chip
  sampler = Sampler(graphdef, cfg, tokenizer, mesh, num_slots=slots, cache_dtype=cache_dtype)
  chips = mesh.devices.size
  out = []
  layouts = [("", num_samples)]
  if sampler.groups(1) != sampler.groups(num_samples):
    layouts.append(("_greedy", 1))
  for suffix, k in layouts:
    sampling = SamplingParams(temperature=1.0 if k > 1 else 0.0, max_new_tokens=max_new_tokens)
    try:
      with jax.default_matmul_precision("default"):
        compiled = sampler.plan(params, prompt_len=prompt_len, num_samples=k,
                                sampling=sampling)
    except Exception as e:  # pylint: disable=broad-except
      if "limited ICI routing" in str(e):
        # Seen on multi-host v5e slices: a program must span every chip of the slice, so the
        # loop's per-host sampling (each host on its own chips) cannot compile there.
        return [Program("sampler", False, float("nan"), chip.usable_hbm,
                        error=_PER_HOST_SAMPLING, placement=placement)]
      if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
        raise
      out.append(Program("sampler" + suffix, False, _oom_bytes(str(e)), chip.usable_hbm,
                         error=str(e).splitlines()[0][:300], placement=placement))
      continue
    layout = dict(sampler.stats, tensor_parallel=mesh_lib.tensor_parallel_size(sampler.mesh))
    for name, exe in compiled.items():
      if suffix and name != "decode":
        continue     # the greedy layout's other programs are smaller than Generate's
      mem, text = exe.memory_analysis(), exe.as_text()   # the HLO text once per program
      need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes)
      prog = Program(name + suffix, need <= chip.usable_hbm, float(need), chip.usable_hbm,
                     argument_bytes=mem.argument_size_in_bytes,
                     temp_bytes=mem.temp_size_in_bytes, collectives=_collective_counts(text),
                     placement=placement)
      if name == "decode":
        _decode_estimate(prog, exe, text, cfg, layout, sampler.steps_per_dispatch, chips, chip)
      elif name == "serving_layout":
        coll = sum(hlo_collectives.traffic_by_kind(text, chips).values())
        prog.collective_bytes = coll
        prog.estimate = {"seconds": coll / chip.ici_bandwidth
                         + mem.argument_size_in_bytes / chip.hbm_bandwidth,
                         "tensor_parallel": layout["tensor_parallel"]}
      out.append(prog)
  return out


def _prompt_len(cfg: LoopConfig, tokenizer, fallback: int = 256) -> int:
  """The longest training prompt, in tokens (the cache the Generate phase needs)."""
  try:
    from rest_jax.tasks import get_task
    task = get_task(cfg.task, tokenizer=tokenizer)
    probs = task.problems("train")[:cfg.num_train_prompts]
    return max(len(tokenizer.encode(p.prompt)) for p in probs) + 1
  except Exception:  # pylint: disable=broad-except
    return fallback


def plan_run(topology: str, num_slices: int = 1, mesh_shape=None,
             only: set | None = None) -> Plan:
  """Compiles every program of the gin-configured run for `topology` (or those in `only`:
  'train_step', 'sampler'); see the module doc."""
  slice_ = tpu_slices.parse(topology, num_slices)
  devices = slice_.devices()
  loop = LoopConfig(workdir="plan")
  cfg, tokenizer = loading.model_config_of(loop.model, dtype=loop.param_dtype,
                                           compute_dtype=loop.compute_dtype,
                                           attention=loop.attention)
  devices = sorted(devices, key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))
  # The mesh `rest-jax run` builds (create_mesh.shape from gin) over the slice's devices.
  mesh = (mesh_lib.create_mesh(mesh_shape, devices) if mesh_shape
          else mesh_lib.create_mesh(devices=devices))
  mesh = mesh_lib.across_slices(mesh, num_slices, devices)
  graphdef, params = _abstract_params(cfg, mesh)
  icfg = improve.ImproveConfig()
  programs = []
  if only is None or "train_step" in only:
    programs.append(plan_train(cfg, graphdef, params, mesh, slice_, batch=icfg.batch_size,
                               seq=icfg.seq_len, accum=icfg.accum_steps,
                               loss_chunk_len=icfg.loss_chunk_len))
  if only is not None and "sampler" not in only:
    return Plan(topology, slice_, dict(mesh.shape), loop.model, cfg.num_params(), programs)
  if tokenizer is None:
    from rest_jax.tokenizers import ByteTokenizer
    tokenizer = ByteTokenizer(vocab_size=cfg.vocab_size)
  # Generate (runtime/sample_placement.py): on one host, on the whole mesh; on several, both
  # placements are compiled: each host on its own chips, and all hosts on the global mesh.
  host = [d for d in devices if d.process_index == devices[0].process_index
          and getattr(d, "slice_index", 0) == getattr(devices[0], "slice_index", 0)]
  host = sorted(host, key=lambda d: d.id)
  own_slice = [d for d in devices
               if getattr(d, "slice_index", 0) == getattr(devices[0], "slice_index", 0)]
  sample = dict(slots=loop.sampler_slots, prompt_len=_prompt_len(loop, tokenizer),
                max_new_tokens=loop.max_new_tokens, num_samples=loop.num_samples,
                cache_dtype=loop.compute_dtype)

  def on(sample_mesh, placement):
    # The policy as Generate receives it: the training layout on the sampling mesh (the
    # sampler's move to its serving layout is one of the programs compiled).
    sample_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        params, params_lib.shardings(sample_mesh, params))
    return plan_sampler(cfg, graphdef, sample_params, sample_mesh, slice_, tokenizer,
                        placement=placement, **sample)

  if len(host) == len(devices):
    programs += on(mesh, "")
  else:
    if len(host) < len(own_slice) and not slice_.chip.subslice_programs:
      programs.append(Program("sampler", False, float("nan"), slice_.chip.usable_hbm,
                              error=_PER_HOST_SAMPLING, placement="per_host"))
    else:
      programs += on(mesh_lib.local_mesh(mesh, host), "per_host")
    programs += on(mesh, "global")
  return Plan(topology, slice_, dict(mesh.shape), loop.model, cfg.num_params(), programs)


def table(plan: Plan) -> str:
  s = plan.slice
  lines = [f"{plan.model} ({plan.params / 1e9:.2f}B parameters) on {plan.topology}: "
           f"{s.chips * s.num_slices} chips ({s.topology_name}"
           f"{f' x {s.num_slices} slices' if s.num_slices > 1 else ''}), {s.hosts} hosts, mesh "
           + " x ".join(f"{k}={v}" for k, v in plan.mesh_shape.items()),
           f"{'program':<16} {'fits':<5} {'per chip':>10} {'of HBM':>8} {'temp':>9}  "
           f"estimate (analytic, collectives not overlapped)  collectives in the program"]
  if plan.placements.keys() - {""}:
    ok = {k: "fits" if v else "does not fit" for k, v in plan.placements.items()}
    lines.insert(1, f"Generate on {s.hosts} hosts: per_host (each host on its own chips) "
                    f"{ok['per_host']}, global (all hosts on the whole mesh) {ok['global']}"
                    + (f"; LoopConfig.sample_placement='auto' takes {plan.sample_placement}"
                       if plan.sample_placement else ""))
  for p in plan.programs:
    est = "" if p.fits else (p.error[:47] if p.error and p.per_chip_bytes != p.per_chip_bytes
                             else "does not fit")
    if p.fits and p.name == "train_step" and p.estimate:
      est = (f"{p.estimate['step_s'] * 1e3:.0f} ms/step, MFU {p.estimate['mfu']:.0%}, "
             f"{p.estimate['tokens_per_s_per_chip']:,.0f} tok/s/chip")
    elif p.fits and p.name.startswith("decode") and p.estimate:
      e = p.estimate
      est = (f"{e['tokens_per_s_per_chip']:,.0f} new tok/s/chip, {e['slots']} slots "
             f"({e['store_rows']}x{e['group_size']}), ICI {e['collective_bytes_per_step'] / 2**20:,.0f} MiB/step")
    elif p.fits and p.name == "serving_layout" and p.estimate:
      est = (f"once per policy: tensor={p.estimate['tensor_parallel']}, "
             f"{p.collective_bytes / GiB:.2f} GiB over ICI")
    coll = ", ".join(f"{k} {v}" for k, v in p.collectives.items()) or "-"
    lines.append(f"{p.label:<16} {'yes' if p.fits else 'NO':<5} "
                 f"{p.per_chip_bytes / GiB:>8.2f}G "
                 f"{p.per_chip_bytes / p.usable_bytes:>8.0%} {p.temp_bytes / GiB:>8.2f}G  "
                 f"{est:<70} {coll}")
  return "\n".join(lines)


def to_json(plan: Plan) -> dict:
  return {"topology": plan.topology, "topology_name": plan.slice.topology_name,
          "chips": plan.slice.chips * plan.slice.num_slices, "hosts": plan.slice.hosts,
          "mesh": plan.mesh_shape, "model": plan.model, "params": plan.params,
          "fits": plan.fits, "sample_placement": plan.sample_placement,
          "placements": plan.placements, "programs": [dataclasses.asdict(p) for p in plan.programs]}
