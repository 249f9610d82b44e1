"""`LoopConfig`, the settings of a run (gin), and the errors a run's setting can end it with."""

from __future__ import annotations

import dataclasses

import gin


class ConfigChangedError(RuntimeError):
  """The workdir holds a run with a different config."""


class RunSettingError(ValueError):
  """The run cannot go on with its setting (e.g. nothing passed the verifier); what is done is
  kept, and a rerun with the setting changed goes on from there."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Settings of a ReST-EM run (the paper's values in brackets).

  model: what `rest-jax --model` takes: a preset, a .gguf file, a Hugging Face directory,
    `hf://ORG/NAME[@REVISION]` (the Hub; the run's base checkpoint records the commit) or an
    orbax checkpoint.
  mode: 'rest_em' (the loop), or 'sft_human' (only the SFT-on-human-data baseline).
  restart_from_base: ReST-EM fine-tunes the base model each iteration [True]; False
    warm-starts from the previous iteration's policy.
  base_sft_steps: fine-tune a freshly initialised model on human solutions for this many
    steps before calling it the base (for the `nano` and `tiny` demos; 0 for pretrained models).
  num_human_solutions: how many of the training prompts have a human-written solution
    available (to the base SFT and the SFT baseline); None: all of them, as in the paper.
    Fewer models the usual case where final answers are plentiful and worked solutions
    scarce: ReST-EM needs only the answers of all `num_train_prompts`.
  num_val_prompts: a validation split carved from the task's training problems: the
    `num_val_prompts` problems after the first `num_train_prompts` (with
    `num_train_prompts=None`: the last ones). They are never sampled for training and give no
    human solution; their pass@1 picks the best iteration and drives `early_stop`, so the test
    split is only reported. 0: no validation split; selection then uses the train split's
    pass@1 (training prompts without a human solution), never the test split.
  num_eval_train_prompts: the "train" figures are measured on this many training prompts
    that have no human solution (the base and the SFT baseline never saw their solutions);
    all of them when every training prompt has one.
  param_dtype, compute_dtype: parameters (and the optimizer state) are stored in
    `param_dtype` and the model computes in `compute_dtype`. TPU/GPU configs use float32
    master weights with bfloat16 compute (softmax, norm statistics, the loss and
    log-probabilities stay float32); the sampler then decodes from a bfloat16 copy made on the
    devices once per Generate phase, with a bfloat16 KV cache. CPU configs keep float32.
  attention: 'auto' (Pallas splash attention on TPU, cuDNN on GPU, XLA on CPU), or one of
    'xla', 'splash', 'cudnn' (models/attention.py).
  sample_placement: with several processes, where Generate runs: 'global' (all processes
    together on the training mesh, no copy: for models larger than one host), 'per_host'
    (each host on its own devices, from a replica made device to device), or 'auto' (per_host
    when a replica fits; `rest-jax plan` reports both). See runtime/sample_placement.py.
  verify_overlap: Generate verifies shard s (a thread feeding the verifier processes) while
    shard s + 1 samples. Off by default: on a CPU-only machine the two compete for the same
    cores (bench/verify_overlap.py: 1.04x on 2 cores); on a TPU VM sampling runs on the
    chips and the wall time tends to the larger of the two.
  adaptive_rounds: 0: Generate draws `num_samples` of every training prompt, as in the
    paper. R >= 1: it samples in up to R rounds under the token budget the fixed K would
    spend, and stops sampling prompts the filter already keeps `max_per_prompt` samples of
    (loop/adaptive_sampling.py); round r's shards go to STAGE/samples/round_{r:02d}/.
  adaptive_max_samples: with adaptive_rounds, the most samples one prompt gets over all
    rounds; None: 4 * num_samples.
  """

  workdir: str
  model: str = "tiny"
  task: str = "arithmetic"
  mode: str = "rest_em"
  iterations: int = 3
  num_samples: int = 8                    # K per training prompt [32 MATH, 64 APPS]
  max_per_prompt: int | None = 10         # [10]
  temperature: float = 0.7                # [0.7]
  top_k: int = 40                         # [40]
  top_p: float = 1.0
  max_new_tokens: int = 256
  stop: tuple[str, ...] = ()
  num_train_prompts: int | None = None
  num_eval_prompts: int | None = None
  num_eval_train_prompts: int = 64
  num_val_prompts: int = 0
  num_human_solutions: int | None = None
  eval_samples: int = 4
  eval_ks: tuple[int, ...] = (1, 4)
  prompts_per_shard: int = 64
  restart_from_base: bool = True
  base_sft_steps: int = 0
  sft_baseline: bool = True
  early_stop: bool = False
  sampler_slots: int = 64
  param_dtype: str = "float32"            # master weights and optimizer state
  compute_dtype: str = "float32"          # 'bfloat16' on TPU/GPU: mixed precision, bf16 KV cache
  attention: str = "auto"                 # self-attention kernel (models/attention.py)
  sample_placement: str = "auto"          # 'auto' | 'global' | 'per_host' (several processes)
  verify_overlap: bool = False            # verify shard s while shard s + 1 samples
  adaptive_rounds: int = 0                # 0: the paper's fixed K per prompt
  adaptive_max_samples: int | None = None
  seed: int = 0
  allow_config_change: bool = False
