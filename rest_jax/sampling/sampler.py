"""Sampling: K completions per prompt from a sharded KV cache, with continuous batching.

The Generate phase of ReST-EM. `Sampler.generate(params, prompts, num_samples=K, ...)` returns
`K` completions of every prompt.

How it runs:

* **Serving layout.** The policy arrives in the training layout (FSDP over `embed`). The
  sampler runs on its own mesh over the same devices, shaped `(data, 1, tensor)`
  (`mesh.serving_mesh`): weights split over attention heads, MLP and vocabulary across the
  `tensor` chips and replicated over `data`; prompts and slots split over `data`, KV heads over
  `tensor`. `serving_params` moves the policy there once per policy, in one jitted program on
  the devices (cast to the compute dtype on the way). A decode step then moves activations,
  never weights. `tensor` defaults to the largest divisor of the device count that divides the
  KV heads: a cache is never copied across chips; a model with fewer KV heads than chips keeps
  a copy of its weights per `tensor` group and spreads its rows over the rest.
* **Groups of slots share a prompt.** Decoding runs on `rows * g` slots in `rows` groups of `g`
  (`g = min(group_size, K)`). A prompt is prefilled once into its group's row of the prompt
  store, and stays there while any of its samples decodes; the group's slots take its samples
  one after another (a finished slot takes the prompt's next sample at once), and when all of
  them are taken and done the group takes the next prompt. A slot's own cache holds only its
  completion (`max_new_tokens` entries), so slot memory does not grow with prompt length.
* **Decode.** One jitted call runs `steps_per_dispatch` decode steps for all slots inside a
  `lax.scan`: forward, draw, stop-id and length checks all on the device. Attention reads each
  group's prompt once per step for all its slots, plus each slot's own tokens, merged into one
  exact softmax (`forward.decode_step`). The host then appends the new tokens, checks stop
  strings on the detokenised text, and refills slots (`sampling_scheduler.Run`).
* **Pure functions.** Prefill, insert and decode are pure functions of `(params, caches, ...)`
  jitted with explicit in/out shardings and the completion cache and slot state donated.
  Shapes come from a few buckets (prompt length, completion length, rows per prefill and per
  insert), so a run compiles a handful of programs; each compilation is logged.
* **Several processes.** On a mesh spanning processes every process runs `generate` with the
  same prompts; the programs run once over all devices and their outputs come back to every
  host, so the host schedulers make the same decisions (`runtime/sample_placement.py`).
* **Determinism.** Sample j of the prompt with key p draws its t-th token with
  `fold_in(fold_in(fold_in(key(seed), p), j), t)`, and a slot's computation never depends on
  the other slots, so a completion is the same whatever the batch, slot count, mesh or order.
  (Floating-point sums may differ in the last bit between shapes, which can flip a draw only
  when the uniform falls within ~1e-6 of a CDF boundary.)

What a `Completion` holds:

* `tokens`: the generated ids that make up the completion, *without* the EOS/stop id that ended
  it; for a stop string, the shortest prefix of the generated ids whose text reaches the stop
  string (text is cut exactly before the stop string).
* `logprob_sum`: the sum over `tokens` of the raw model log-probabilities
  (`log_softmax(logits)` at temperature 1, no top-k/top-p), whatever the sampling filter.
* `finish_reason`: 'eos' (an id in `tokenizer.stop_ids`/`eos_id`), 'stop' (a stop string) or
  'length' (`max_new_tokens` reached).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from rest_jax.models import params as params_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.sampling import filters
from rest_jax.sampling import forward as sampling_model
from rest_jax.sampling import scheduler as sched
from rest_jax.sampling import settings
from rest_jax.sampling.settings import DEFAULT_BUCKETS, SamplingParams
from rest_jax.sampling.slots import SlotState, is_stop, sample_keys
from rest_jax.models.config import ModelConfig
from rest_jax.sampling.forward import DecodeCache
from rest_jax.sampling.scheduler import MAX_STOP_IDS, Completion

log = logging.getLogger(__name__)



@gin.configurable
class Sampler:
  """Continuous-batching sampler on a mesh. See the module docstring.

  Args:
    graphdef, config: the model (`nnx.split(model)[0]` and its `ModelConfig`).
    tokenizer: a `rest_jax.tokenizers.Tokenizer`; its `stop_ids` (or `eos_id`) end a sample.
    mesh: the mesh the policy's parameters live on; the sampler decodes on a serving mesh
      over the same devices (`serving_mesh`).
    num_slots: most sequences decoding at once.
    group_size: most slots sharing one prompt (`g = min(group_size, K)` for K samples); a
      call decodes on `rows * g` slots, `rows = num_slots // g` (capped by `prompt_rows`).
    prompt_rows: most prompts decoding at once (rows of the prompt store); None: as many as
      `num_slots // g`. Caps the store's memory when K is small (greedy evaluation: g = 1).
    tensor_parallel: chips each weight matrix is split over when decoding (None: the largest
      divisor of the device count that divides the KV heads).
    max_cache_len: longest prompt + completion allowed (default: the model's `max_seq_len`).
    steps_per_dispatch: decode steps per jitted call between host checks.
    cache_dtype: KV cache storage ('float32' or 'bfloat16').
    prompt_buckets: prompt lengths are padded up to one of these.
    cache_buckets: a slot's completion cache holds bucket(max_new_tokens) entries.
    max_prefill_batch: most prompts per prefill call (padded to a power of two).
    truncate_prompts: cut over-long prompts from the left instead of raising.
    window_quantum: if set, a dispatch attends only to the first round_up(longest completion,
      quantum) completion entries (one compiled program per window size).
    layer_unroll: unroll factor of the decode step's layer scan (`True`: every layer). On
      XLA:CPU, 1 is fastest (BENCHMARKS.md); on accelerators it trades compile time for fewer
      loop iterations.
    compiler_options: XLA options for the sampler's programs only (e.g. CPU tuning).
  """

  def __init__(self, graphdef, config: ModelConfig, tokenizer, mesh, *, num_slots: int = 32,
               group_size: int = 16, prompt_rows: int | None = None,
               tensor_parallel: int | None = None, max_cache_len: int | None = None,
               steps_per_dispatch: int = 8, cache_dtype: str = "float32",
               prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
               cache_buckets: Sequence[int] | None = None, max_prefill_batch: int = 8,
               truncate_prompts: bool = False, window_quantum: int | None = None,
               layer_unroll: int | bool = 1, compiler_options: dict | None = None):
    if min(num_slots, group_size, steps_per_dispatch, max_prefill_batch) < 1:
      raise ValueError("num_slots, group_size, steps_per_dispatch and max_prefill_batch must "
                       "be >= 1")
    if prompt_rows is not None and prompt_rows < 1:
      raise ValueError(f"prompt_rows must be >= 1 (or None), got {prompt_rows}")
    self.graphdef, self.config, self.tokenizer = graphdef, config, tokenizer
    n = mesh.devices.size
    tp = tensor_parallel or mesh_lib.serving_tensor_parallel(n, config.num_heads,
                                                             config.num_kv_heads)
    self.mesh = mesh_lib.serving_mesh(mesh, tp)   # raises when tp does not divide n
    self.num_slots, self.group_size, self.prompt_rows = num_slots, group_size, prompt_rows
    self.max_cache_len = max_cache_len or config.max_seq_len
    self.steps_per_dispatch = steps_per_dispatch
    self.cache_dtype = jnp.dtype(cache_dtype)
    sampling_model.storage_dtype(self.cache_dtype)   # validates
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.cache_buckets = tuple(sorted(cache_buckets or prompt_buckets))
    self.max_prefill_batch = sched.pow2(max_prefill_batch)
    self.truncate_prompts = truncate_prompts
    self.window_quantum = window_quantum
    self.layer_unroll = layer_unroll
    self.compiler_options = dict(compiler_options or {})
    ids = list(getattr(tokenizer, "stop_ids", None) or []) + [tokenizer.eos_id]
    self.stop_ids = sorted({int(i) for i in ids if i is not None})
    if len(self.stop_ids) > MAX_STOP_IDS:
      raise ValueError(f"at most {MAX_STOP_IDS} stop ids are supported, got {self.stop_ids}")
    self._executables: dict = {}
    self._planned: dict | None = None   # set while `plan` compiles without running
    self.compilations: list[tuple[str, float]] = []   # (program, seconds), in order
    self.stats: dict = {}                             # figures of the last generate()
    self.serving_stats: dict = {}                     # figures of the last move to serving

  def groups(self, num_samples: int, num_prompts: int | None = None) -> tuple[int, int]:
    """(prompt rows, slots per row) of a call with K = `num_samples` (and `num_prompts`
    prompts: no more rows than prompts, rounded up to a power of two). Rows are a multiple of
    the mesh's `data` size where they can be, so each row and its slots share a chip."""
    g = max(1, min(self.group_size, num_samples, self.num_slots))
    rows = self.num_slots // g
    if self.prompt_rows:
      rows = min(rows, self.prompt_rows)
    if num_prompts is not None:
      rows = min(rows, sched.pow2(num_prompts))
    d = mesh_lib.batch_shards(self.mesh)
    if rows > d:
      rows -= rows % d
    return max(1, rows), g

  # ------------------------------------------------------------------------ shardings

  def _sharding(self, names, shape):
    return mesh_lib.logical_sharding(self.mesh, names, shape)

  def _cache_sharding(self, shape):
    sh = self._sharding(DecodeCache.LOGICAL, shape)
    return DecodeCache(sh, sh)

  def _state_sharding(self, slots: int):
    row = self._sharding(("batch",), (slots,))
    return SlotState(row, row, row, row, self._sharding(("batch", None), (slots, 2)))

  def _replicated(self):
    return mesh_lib.replicated(self.mesh)

  # ------------------------------------------------------------------------ programs

  def _program(self, name: str, static: tuple, fn, args, in_shardings, out_shardings,
               donate: tuple[int, ...]):
    """A compiled program for these argument shapes (compiled and logged on first use)."""
    sig = (name, static, tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None))
                               for x in jax.tree.leaves(args)))
    exe = self._executables.get(sig)
    if exe is None:
      t0 = time.perf_counter()
      jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                       donate_argnums=donate)
      with jax.set_mesh(self.mesh):
        lowered = jitted.lower(*args)
      exe = lowered.compile(self.compiler_options or None)
      seconds = time.perf_counter() - t0
      desc = f"{name}{static}" if static else name
      self.compilations.append((desc, seconds))
      log.info("sampler: compiled %s in %.1fs", desc, seconds)
      self._executables[sig] = exe
    return exe

  def _call(self, name, static, fn, args, in_shardings, out_shardings, donate):
    """Compiles (once) and runs `fn` on `args`. Host inputs are put on their shardings first:
    jit accepts numpy only for a single process. While `plan` runs, compiles only."""
    if self._planned is not None:
      abstract = lambda sh, a: jax.tree.map(
          lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
              np.shape(x), np.asarray(x).dtype, sharding=sh), a)
      args = jax.tree.map(abstract, in_shardings, args,
                          is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
      self._planned[name] = self._program(name, static, fn, args, in_shardings, out_shardings,
                                          donate)
      return None
    args = jax.tree.map(
        lambda sh, a: a if all(isinstance(x, jax.Array) for x in jax.tree.leaves(a))
        else jax.device_put(a, sh), in_shardings, args,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    return self._program(name, static, fn, args, in_shardings, out_shardings, donate)(*args)

  def _params_sharding(self, params):
    return jax.tree.map(lambda x: x.sharding, params)

  def _serving_target(self, params):
    """(shardings, dtypes) of `params` in the serving layout."""
    dt = jnp.dtype(self.config.dtype)
    sh = params_lib.shardings(self.mesh, params)
    dts = jax.tree.map(lambda x: dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
                       params)
    return sh, dts

  def in_serving_layout(self, params) -> bool:
    sh, dts = self._serving_target(params)
    return all(getattr(x, "sharding", None) == s and x.dtype == d for x, s, d in zip(
        jax.tree.leaves(params), jax.tree.leaves(sh), jax.tree.leaves(dts)))

  def serving_params(self, params):
    """`params` in the serving layout and the model's compute dtype: one jitted program on
    the devices (a reshard and a cast; nothing goes through host memory), run once per policy.
    Identity when they are already there. Its time and size are in `serving_stats`."""
    if self.in_serving_layout(params):
      return params
    target, dts = self._serving_target(params)
    cast = lambda p: jax.tree.map(lambda x, d: x.astype(d), p, dts)
    t0 = time.perf_counter()
    out = self._call("serving_layout", (), cast, (params,), (self._params_sharding(params),),
                     target, ())
    if out is not None:
      jax.block_until_ready(out)
      self.serving_stats = {"seconds": time.perf_counter() - t0,
                            "bytes": sum(x.nbytes for x in jax.tree.leaves(out))}
      log.info("sampler: policy moved to the serving layout (%s; %.2f GiB) in %.1fs",
               mesh_lib.describe(self.mesh), self.serving_stats["bytes"] / 2**30,
               self.serving_stats["seconds"])
    return out

  def _prefill(self, params, store, store_logits, tokens, lengths, rows):
    graphdef, kv_dtype = self.graphdef, self.cache_dtype

    def fn(params, store, store_logits, tokens, lengths, rows):
      logits, kv = sampling_model.prefill(graphdef, params, tokens, lengths, kv_dtype)
      t = tokens.shape[1]
      put = lambda s, x: s.at[:, rows, :, :t].set(x, mode="drop")
      store = DecodeCache(put(store.k, kv.k), put(store.v, kv.v))
      return store, store_logits.at[rows].set(logits, mode="drop")

    p, t = tokens.shape
    store_sh = self._cache_sharding(store.k.shape)
    logits_sh = self._sharding(("batch", "vocab"), store_logits.shape)
    args = (params, store, store_logits, tokens, lengths, rows)
    return self._call(
        "prefill", (p, t), fn, args,
        (self._params_sharding(params), store_sh, logits_sh, self._sharding(("batch", None), (p, t)),
         self._replicated(), self._replicated()),
        (store_sh, logits_sh), donate=(1, 2))

  def _insert(self, state, store_logits, slots, rows, pkeys, samples, lengths, seed, dyn, spec):
    """Starts samples in slots: their first token is drawn from their prompt's stored logits.
    The completion cache is not touched: a slot at step 1 reads none of its old entries."""
    def fn(state, store_logits, slots, rows, pkeys, samples, lengths, seed, dyn):
      temperature, top_p, stop_ids, max_new = dyn
      keys = sample_keys(seed, pkeys, samples)
      first_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
      tok, logp = filters.draw(store_logits[rows], first_keys, spec, temperature, top_p)
      done = is_stop(tok, stop_ids) | (max_new <= 1)
      set_ = lambda a, v: a.at[slots].set(v, mode="drop")
      state = SlotState(
          token=set_(state.token, tok), pos=set_(state.pos, lengths),
          step=set_(state.step, jnp.ones_like(lengths)), active=set_(state.active, ~done),
          key=set_(state.key, jax.random.key_data(keys)))
      return state, tok, logp

    state_sh = self._state_sharding(state.token.shape[0])
    rep = self._replicated()
    args = (state, store_logits, slots, rows, pkeys, samples, lengths, seed, dyn)
    return self._call(
        "insert", (len(slots), spec), fn, args,
        (state_sh, self._sharding(("batch", "vocab"), store_logits.shape)) + (rep,) * 7,
        (state_sh, rep, rep), donate=(0,))

  def _decode(self, params, store, cache, state, dyn, spec, window):
    graphdef, steps, unroll = self.graphdef, self.steps_per_dispatch, self.layer_unroll

    def fn(params, store, cache, state, dyn):
      temperature, top_p, stop_ids, max_new = dyn

      def body(carry, _):
        cache, st = carry
        logits, cache = sampling_model.decode_step(graphdef, params, store, cache, st.token,
                                                   st.pos, st.step, window, unroll)
        keys = jax.vmap(lambda kd, t: jax.random.fold_in(jax.random.wrap_key_data(kd), t))(
            st.key, st.step)
        tok, logp = filters.draw(logits, keys, spec, temperature, top_p)
        step = st.step + 1
        done = is_stop(tok, stop_ids) | (step >= max_new)
        act = st.active
        st = SlotState(token=jnp.where(act, tok, st.token), pos=jnp.where(act, st.pos + 1, st.pos),
                       step=jnp.where(act, step, st.step), active=act & ~done, key=st.key)
        return (cache, st), (tok, logp, act)

      (cache, state), (toks, logps, valid) = jax.lax.scan(body, (cache, state), None,
                                                          length=steps)
      return cache, state, toks.T, logps.T, valid.T

    slots = state.token.shape[0]
    cache_sh = self._cache_sharding(cache.k.shape)
    state_sh = self._state_sharding(slots)
    # The host reads these every dispatch: on a mesh spanning processes (global placement)
    # each process needs all rows, so they come back replicated.
    out_sh = (self._replicated() if self.mesh.is_multi_process
              else self._sharding(("batch", None), (slots, steps)))
    args = (params, store, cache, state, dyn)
    return self._call(
        "decode", (slots, store.k.shape[1], store.length, cache.length, window, steps, spec),
        fn, args,
        (self._params_sharding(params), self._cache_sharding(store.k.shape), cache_sh, state_sh,
         self._replicated()),
        (cache_sh, state_sh, out_sh, out_sh, out_sh), donate=(2, 3))

  def _abstract_cache(self, rows, length):
    shape = DecodeCache.shape(self.config, rows, length)
    sh = self._cache_sharding(shape)
    store_dt = sampling_model.storage_dtype(self.cache_dtype)
    return DecodeCache(jax.ShapeDtypeStruct(shape, store_dt, sharding=sh.k),
                       jax.ShapeDtypeStruct(shape, store_dt, sharding=sh.v))

  def plan(self, params, *, prompt_len: int, num_samples: int, sampling: SamplingParams,
           num_prompts: int | None = None) -> dict:
    """Compiles, without running, the programs that `generate` runs for prompts of up to
    `prompt_len` tokens: {name: compiled}: the move to the serving layout (when `params` are
    not in it), prefill, insert and decode. `params` may be abstract (ShapeDtypeStructs with
    shardings, e.g. on a TPU slice's mesh). The programs are the very ones `generate` calls
    (same functions, shapes and shardings), at the largest prefill batch.
    """
    spec = filters.FilterSpec.of(sampling.temperature, sampling.top_k, sampling.top_p,
                                 self.config.vocab_size)
    run = sched.Run(self, params, [[0] * prompt_len] * (num_prompts or self.num_slots),
                    list(range(num_prompts or self.num_slots)), num_samples, sampling, spec, 0,
                    False, None)
    cfg, slots = self.config, run.slots
    self.stats = {"slots": slots, "store_rows": run.rows, "group_size": run.g,
                  "store_len": run.store_len, "cache_len": run.cache_len}
    b = self.max_prefill_batch
    i32 = lambda *shape: np.zeros(shape, np.int32)
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         jax.eval_shape(lambda: SlotState.empty(slots)),
                         self._state_sharding(slots))
    self._planned = {}
    try:
      target, dts = self._serving_target(params)
      if not self.in_serving_layout(params):
        self.serving_params(params)
        params = jax.tree.map(lambda x, sh, d: jax.ShapeDtypeStruct(x.shape, d, sharding=sh),
                              params, target, dts)
      store = self._abstract_cache(run.rows, run.store_len)
      logits = jax.ShapeDtypeStruct((run.rows, cfg.vocab_size), jnp.float32,
                                    sharding=self._sharding(("batch", "vocab"),
                                                            (run.rows, cfg.vocab_size)))
      self._prefill(params, store, logits, i32(b, run.store_len), i32(b), i32(b))
      n = sched.pow2(slots)
      self._insert(state, logits, i32(n), i32(n), np.zeros((n,), np.uint32),
                   np.zeros((n,), np.uint32), i32(n), run.seed, run.dyn, spec)
      self._decode(params, store, self._abstract_cache(slots, run.cache_len), state, run.dyn,
                   spec, None)
      return dict(self._planned)
    finally:
      self._planned = None

  def _zeros(self, name, make, sharding):
    exe = self._program(name, (), make, (), (), sharding, ())
    return exe()

  def _empty_state(self, slots: int):
    return self._zeros(f"zeros_state{slots}", lambda: SlotState.empty(slots),
                       self._state_sharding(slots))

  def zeros_cache(self, rows: int, length: int) -> DecodeCache:
    """A zero cache of `rows` rows and `length` entries, made on the devices in its sharding."""
    shape = DecodeCache.shape(self.config, rows, length)
    return self._zeros(f"zeros_cache{shape}",
                       lambda: DecodeCache.zeros(self.config, rows, length, self.cache_dtype),
                       self._cache_sharding(shape))

  def time_decode(self, params, *, cache_len: int, position: int, num_samples: int = 1,
                  prompt_len: int | None = None, dispatches: int = 10,
                  sampling: SamplingParams | None = None) -> tuple[float, int]:
    """(seconds per decode step, KV bytes of the prompt store and the completion cache) with
    every slot decoding at `position` of a sequence of up to `cache_len`: prompts of
    `prompt_len` (default half of `cache_len`) in the store, shared by groups of
    min(group_size, `num_samples`) slots, completions in the rest. A benchmark helper: decode
    only, no host work between dispatches.
    """
    prompt_len = cache_len // 2 if prompt_len is None else prompt_len
    new_tokens = cache_len - prompt_len
    sampling = sampling or SamplingParams(max_new_tokens=new_tokens)
    params = self.serving_params(params)
    spec = filters.FilterSpec.of(sampling.temperature, sampling.top_k, sampling.top_p,
                                 self.config.vocab_size)
    rows, g = self.groups(num_samples)
    slots = rows * g
    store = self.zeros_cache(rows, prompt_len)
    cache = self.zeros_cache(slots, new_tokens)
    dyn = (np.float32(max(sampling.temperature, 1e-6)), np.float32(sampling.top_p),
           np.full((MAX_STOP_IDS,), -1, np.int32), np.int32(1 << 30))
    step = max(1, min(position - prompt_len + 1, new_tokens - self.steps_per_dispatch))

    def fresh_state():
      z = np.zeros((slots,), np.int32)
      st = SlotState(z, np.full((slots,), prompt_len + step - 1, np.int32), z + step,
                     np.ones((slots,), bool), np.zeros((slots, 2), np.uint32))
      return jax.device_put(st, self._state_sharding(slots))

    cache, *out = self._decode(params, store, cache, fresh_state(), dyn, spec, None)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(dispatches):
      cache, *out = self._decode(params, store, cache, fresh_state(), dyn, spec, None)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - t0) / (dispatches * self.steps_per_dispatch)
    return seconds, cache.nbytes + store.nbytes

  # ------------------------------------------------------------------------ generate

  def _check_prompts(self, prompts, max_new: int) -> list[list[int]]:
    limit = self.max_cache_len
    if max_new >= limit:
      raise ValueError(f"max_new_tokens={max_new} leaves no room for a prompt in a cache of "
                       f"{limit} (max_cache_len)")
    out = []
    for i, p in enumerate(prompts):
      p = [int(t) for t in p]
      if not p:
        raise ValueError(f"prompt {i} is empty")
      if len(p) + max_new > limit:
        if not self.truncate_prompts:
          raise ValueError(
              f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new} it needs "
              f"{len(p) + max_new} cache positions, more than max_cache_len={limit} "
              f"(shorten it, lower max_new_tokens, or pass truncate_prompts=True)")
        p = p[len(p) - (limit - max_new):]
      out.append(p)
    return out

  def generate(self, params, prompts: Sequence[Sequence[int]], *, num_samples: int,
               sampling: SamplingParams, seed: int, prompt_keys: Sequence[int] | None = None,
               sample_offsets: Sequence[int] | None = None, progress: bool | str = False,
               on_prompt_done: Callable[[int, list[Completion]], None] | None = None
               ) -> list[list[Completion]]:
    """`num_samples` completions of every prompt: result[prompt][sample].

    `prompt_keys[i]` (default i) is the integer folded into the seed for prompt i; pass a
    stable per-problem integer so results do not depend on where a prompt sits in the list.
    `sample_offsets[i]` (default 0) is the index of prompt i's first sample: its sample j draws
    from index `sample_offsets[i] + j` (its `Completion.sample_index`), so samples 0..3 in one
    call equal samples 0..1 and then 2..3 (offset 2) in two calls. `result[i][j]` stays
    positional. `on_prompt_done(i, completions)` runs as soon as all samples of prompt i are
    finished.
    """
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not prompts:
      return []
    if prompt_keys is None:
      prompt_keys = range(len(prompts))
    prompt_keys = [int(k) % (1 << 32) for k in prompt_keys]
    if len(prompt_keys) != len(prompts):
      raise ValueError(f"{len(prompt_keys)} prompt_keys for {len(prompts)} prompts")
    if sample_offsets is not None:
      sample_offsets = settings.check_offsets(sample_offsets, len(prompts), num_samples)
    prompts = self._check_prompts(prompts, sampling.max_new_tokens)
    spec = filters.FilterSpec.of(sampling.temperature, sampling.top_k, sampling.top_p,
                                 self.config.vocab_size)
    params = self.serving_params(params)
    return sched.Run(self, params, prompts, prompt_keys, num_samples, sampling, spec, seed,
                     progress, on_prompt_done, sample_offsets).run()
