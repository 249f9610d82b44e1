"""The `rest-jax` command.

Each subcommand lives in its own module, imported only when that command runs (so `--help`
stays fast); the module provides `add_arguments(parser)` and `main(args) -> int`. Configured
jobs take t5x-style gin flags; this file and `commands/gin_flags.py` are the only gin parsers.
A command that takes no gin flags refuses them. The project's own errors (`USER_ERRORS`,
OSError) become one line on stderr and exit status 2 (a preemption 143, a process group that
did not form 1: `OTHER_EXITS`); any other exception is a bug and keeps its traceback. This is
the only place that maps exceptions to exit statuses.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from rest_jax.commands import gin_flags

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("rest_jax.commands.run", "the whole ReST-EM loop from a gin config "
            "(resumes an existing WORKDIR)"),
    "eval": ("rest_jax.commands.eval", "a model's accuracy on a task (greedy and sampled pass@1, "
             "pass@k, maj@k), as the loop measures it; --baseline: a paired comparison"),
    "plan": ("rest_jax.commands.plan", "compile a run's programs for a TPU slice without one: "
             "per-chip memory, fit, collectives, estimated MFU and decode tokens/s"),
    "sample": ("rest_jax.commands.sample", "K samples of each prompt from a model, as JSON lines "
               "(text, token ids, finish reason, log-probability)"),
    "verify": ("rest_jax.commands.verify", "score completions with a verifier: one JSON verdict "
               "line per input line"),
    "logprobs": ("rest_jax.commands.logprobs", "per-token log-probabilities of a text, as JSON "
                 "(parity checks)"),
    "export": ("rest_jax.commands.export", "a Hugging Face safetensors directory from a "
               "checkpoint (or GGUF / HF dir / preset)"),
    "train-rm": ("rest_jax.commands.train_rm", "train a reward model (transformer + scalar head) "
                 "on (prompt, completion, reward) JSONL or a run's verified samples"),
    "tasks": ("rest_jax.commands.tasks", "list registered tasks with split sizes; "
              "`tasks show NAME` prints formatted prompts"),
}


# The project's own errors (bad input, not bugs): `rest-jax NAME: message` and exit status 2,
# with OSError (a missing input, an unwritable output or workdir). Looked up in sys.modules
# when an exception arrives, so `--help` imports none of them: a class whose module was never
# imported cannot have been raised.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("rest_jax.commands.errors", "CommandError"),
    ("rest_jax.models.weights", "WeightsError"),
    ("rest_jax.tokenizers.base", "TokenizerError"),
    ("rest_jax.tokenizers.gguf_file", "GGUFFormatError"),
    ("rest_jax.tasks.base", "TaskDataError"),
    ("rest_jax.tasks.kept", "KeptDataError"),
    ("rest_jax.rewards.data", "RewardDataError"),
    ("rest_jax.rewards.sources", "RewardSourceError"),
    ("rest_jax.loop.config", "ConfigChangedError"),
    ("rest_jax.loop.config", "RunSettingError"),
    ("rest_jax.loop.evaluate_model", "EvaluationError"),
    ("rest_jax.verifiers.sandbox", "SandboxUnavailable"),
    ("rest_jax.runtime.storage", "StorageError"),
)


# Exceptions that end a command with their message and a status of their own: a stop at a
# safe point after SIGTERM (the work done is on disk; 128 + SIGTERM, as a shell reports), and a
# process group that could not form or lost a peer.
OTHER_EXITS: tuple[tuple[str, str, int], ...] = (
    ("rest_jax.runtime.preemption", "Preempted", 143),
    ("rest_jax.runtime.distributed", "DistributedError", 1),
)


def _user_error_types() -> tuple[type[BaseException], ...]:
  return (OSError, *(getattr(sys.modules[m], c) for m, c in USER_ERRORS if m in sys.modules))


def exit_status(e: BaseException) -> int | None:
  """The status a command ends with for `e` (its message on one line of stderr), or None for
  a bug, which keeps its traceback: the one mapping from exceptions to exit statuses."""
  for module, name, status in OTHER_EXITS:
    if module in sys.modules and isinstance(e, getattr(sys.modules[module], name)):
      return status
  return 2 if isinstance(e, _user_error_types()) else None


def _gin_args(argv: Sequence[str]) -> list[str]:
  return [a for a in argv if a.startswith("--gin.") or
          a.split("=", 1)[0] in ("--gin_file", "--gin_bindings", "--gin_search_path")]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rest-jax",
      description="ReST-EM and ReST: self-training of language models on verified samples.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (_, help_text) in COMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  return parser


def _cpu_only_machine_uses_cpu() -> None:
  """On a machine with libtpu installed but no TPU (the test extra, compile-only planning),
  jax would try the TPU backend first and libtpu would log warnings about hostnames and
  accelerator types, then jax one about the missing TPU. There, the CPU backend is asked for
  (as `JAX_PLATFORMS=cpu` would; `plan` still compiles for TPU slices). TPU VMs, GPU machines and an
  explicit `JAX_PLATFORMS` are left as they are."""
  import importlib.util
  from rest_jax.runtime import distributed as dist
  if os.environ.get("JAX_PLATFORMS") or dist.on_tpu_vm():
    return
  if importlib.util.find_spec("libtpu") is None or any(
      importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
    return
  import jax
  jax.config.update("jax_platforms", "cpu")   # jax read the environment on import already


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every save step at INFO through absl; keep the console for progress.
  logging.getLogger("absl").setLevel(logging.WARNING)
  if not argv or argv[0] in ("-h", "--help"):
    build_parser().print_help()
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    build_parser().print_help(sys.stderr)
    print(f"\nrest-jax: unknown command {name!r}", file=sys.stderr)
    return 2
  module_name, help_text = COMMANDS[name]
  _cpu_only_machine_uses_cpu()
  from rest_jax.runtime import storage
  storage.configure()   # gs:// through gcsfs, and an emulator from STORAGE_EMULATOR_HOST alone
  module = importlib.import_module(module_name)
  parser = argparse.ArgumentParser(prog=f"rest-jax {name}", description=help_text)
  gin_args = _gin_args(rest)
  try:
    rest, dot_bindings = gin_flags.split_gin_args(rest)
    parser.set_defaults(gin_dot_bindings=dot_bindings)
    module.add_arguments(parser)
    # Gin flags are never dropped silently: a command that takes none refuses them.
    if gin_args and "--gin_file" not in parser._option_string_actions:  # pylint: disable=protected-access
      print(f"rest-jax {name}: takes no gin flags (got {gin_args[0]}); its settings are its own "
            f"flags, see `rest-jax {name} --help`", file=sys.stderr)
      return 2
    return module.main(parser.parse_args(rest)) or 0
  except gin_flags.GinError as e:
    print(f"rest-jax {name}: gin config error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"rest-jax {name}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    status = exit_status(e)
    if status is None:
      raise  # a bug: keep the traceback
    # gin appends "In call to configurable ..." lines to what passes through a configurable.
    message = "\n".join(line for line in str(e).splitlines()
                        if not line.lstrip().startswith("In call to configurable"))
    print(f"rest-jax {name}: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
  sys.exit(main())
