"""Multi-host execution: process-group start-up, barriers and moving arrays between meshes.

Every host of a TPU pod runs the same program and sees only its local devices. `initialize`
joins them into one JAX job (automatically on TPU VMs; from flags or environment elsewhere,
e.g. several CPU processes on one machine with gloo collectives, as the tests do), with a
bounded wait and an error that names the coordinator and the processes that never arrived.

`barrier(name)` waits, with a timeout, until every process reaches the same point; the loop
calls it between phases so that no process starts a phase before all finished the previous one.
A single process needs none of this: every function here is a no-op or identity there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

ENV_COORDINATOR = "REST_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "REST_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "REST_JAX_PROCESS_ID"
ENV_TIMEOUT = "REST_JAX_INIT_TIMEOUT"
# How long a barrier waits for the slowest process. A phase on one host can outlast another's
# by the whole phase (uneven shards), so this is long; a dead peer is reported sooner by the
# coordination service's heartbeat (`heartbeat_timeout_s`).
ENV_BARRIER_TIMEOUT = "REST_JAX_BARRIER_TIMEOUT"
DEFAULT_BARRIER_TIMEOUT_S = 4 * 3600


class DistributedError(RuntimeError):
  """The process group could not start, or a peer process disappeared."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  init_timeout_s: int = 300
  heartbeat_timeout_s: int = 100

  @classmethod
  def from_env(cls, **overrides) -> "ProcessGroup":
    """Flags (given as overrides, None = unset) take precedence over the environment."""
    env = os.environ
    def pick(key, env_key, conv):
      v = overrides.get(key)
      if v is None and env.get(env_key):
        try:
          v = conv(env[env_key])
        except ValueError:
          raise DistributedError(f"{env_key}={env[env_key]!r} is not a valid {conv.__name__}")
      return v
    timeout = pick("init_timeout_s", ENV_TIMEOUT, int)
    return cls(coordinator_address=pick("coordinator_address", ENV_COORDINATOR, str),
               num_processes=pick("num_processes", ENV_NUM_PROCESSES, int),
               process_id=pick("process_id", ENV_PROCESS_ID, int),
               init_timeout_s=300 if timeout is None else timeout,
               heartbeat_timeout_s=overrides.get("heartbeat_timeout_s") or 100)

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None or (self.num_processes or 1) > 1


def on_tpu_vm() -> bool:
  """A Cloud TPU VM worker: jax finds the coordinator itself from the TPU metadata."""
  return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_WORKER_ID")
              or os.environ.get("CLOUD_TPU_TASK_ID")) or os.path.exists("/dev/accel0") or (
                  os.path.exists("/dev/vfio") and bool(os.environ.get("TPU_ACCELERATOR_TYPE")))


def _missing_tasks(message: str, num_processes: int | None) -> list[int]:
  """Process ids a coordination-service error names as absent (`/task:N`)."""
  ids = sorted({int(m) for m in re.findall(r"task:(\d+)", message)})
  return [i for i in ids if num_processes is None or i < num_processes]


def initialize(group: ProcessGroup | None = None) -> bool:
  """Joins the process group; returns True if this is a multi-process job.

  Call before anything touches a JAX backend. Explicit settings (flags or the
  `REST_JAX_*` environment) win; otherwise TPU VMs initialise automatically and a lone
  process runs without a group.
  """
  import jax
  group = group or ProcessGroup.from_env()
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if not group.explicit and not on_tpu_vm():
    return False
  kwargs = {}
  if group.explicit:
    if group.coordinator_address is None or group.num_processes is None or (
        group.process_id is None):
      raise DistributedError(
          "a multi-process job needs all of --coordinator_address, --num_processes and "
          f"--process_id (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); got "
          f"coordinator_address={group.coordinator_address!r}, "
          f"num_processes={group.num_processes!r}, process_id={group.process_id!r}")
    if not 0 <= group.process_id < group.num_processes:
      raise DistributedError(f"process_id {group.process_id} is not in [0, "
                             f"{group.num_processes}) (num_processes={group.num_processes})")
    kwargs = dict(coordinator_address=group.coordinator_address,
                  num_processes=group.num_processes, process_id=group.process_id)
    if _cpu_only():
      # CPU processes need a cross-process collective implementation of their own.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      _native_stdout_to_stderr()
  where = group.coordinator_address or "the TPU metadata server's coordinator"
  log.info("joining process group: coordinator %s, %s processes, this is process %s "
           "(waiting up to %ds)", where, group.num_processes or "auto", group.process_id,
           group.init_timeout_s)

  def start_failure(text: str) -> str:
    missing = _missing_tasks(text, group.num_processes)
    if missing:
      detail = f"processes {missing} did not connect"
    elif group.num_processes and group.process_id is not None:
      others = [i for i in range(group.num_processes) if i != group.process_id]
      detail = (f"process {others[0]} did not connect" if len(others) == 1 else
                f"not all of processes {others} connected")
    else:
      detail = "not every process connected"
    return (f"process group did not start within {group.init_timeout_s}s: coordinator "
            f"{where}, expected {group.num_processes or 'all'} processes, this is process "
            f"{group.process_id}; {detail}. Start every process with the same coordinator "
            f"address and process count" + (f" ({text})" if text else ""))

  # jax aborts the process when start-up times out (its coordination client has no Python
  # error path), so the clear message is printed by a timer just before that happens.
  watchdog = threading.Timer(max(group.init_timeout_s - 0.5, 0.1),
                             lambda: print(f"rest-jax: {start_failure('')}", file=sys.stderr,
                                           flush=True))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=group.init_timeout_s,
                               heartbeat_timeout_seconds=group.heartbeat_timeout_s)
  except Exception as e:  # jax raises XlaRuntimeError/RuntimeError with the service's text
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DistributedError(start_failure(f"the service said: {first}")) from e
  finally:
    watchdog.cancel()
  log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1


def _native_stdout_to_stderr() -> None:
  """Gloo announces its peers on the process's standard output ("[Gloo] Rank 0 is connected
  to ..."), from native code, at the first collective. A command's stdout carries only its own
  output (tables, JSON lines): file descriptor 1 goes to stderr, and Python's `sys.stdout`
  keeps the real standard output."""
  if getattr(sys.stdout, "_rest_jax_own_stdout", False):
    return
  sys.stdout.flush()
  real = os.dup(1)
  os.dup2(2, 1)
  out = open(real, "w", encoding=sys.stdout.encoding, errors=sys.stdout.errors,  # noqa: SIM115
             buffering=1 if sys.stdout.line_buffering else -1)
  out._rest_jax_own_stdout = True  # pylint: disable=protected-access
  sys.stdout = out


def _cpu_only() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  import importlib.util
  return not any(importlib.util.find_spec(m) for m in ("libtpu", "jax_cuda12_plugin",
                                                      "jax_cuda13_plugin"))


def process_index() -> int:
  import jax
  return jax.process_index()


def process_count() -> int:
  import jax
  return jax.process_count()


def is_writer() -> bool:
  """Process 0 alone writes reports, metrics and `state.json`."""
  return process_index() == 0


def barrier(name: str, timeout_s: float | None = None) -> None:
  """Waits until every process reaches `barrier(name)`; no-op for one process.

  Raises DistributedError naming the barrier when a peer does not arrive in time (it died,
  or is stuck) instead of hanging.
  """
  if process_count() == 1:
    return
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if timeout_s is None:
    timeout_s = float(os.environ.get(ENV_BARRIER_TIMEOUT, DEFAULT_BARRIER_TIMEOUT_S))
  try:
    client.wait_at_barrier(f"rest_jax:{name}", int(timeout_s * 1000))
  except Exception as e:
    raise DistributedError(
        f"process {process_index()} of {process_count()}: not every process reached "
        f"'{name}' within {timeout_s:.0f}s ({str(e).strip().splitlines()[0]}); another "
        "process has probably died: see its log, then rerun the same command on every host "
        "to resume") from e


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (all processes must call it together)."""
  if process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def allgather_json(obj) -> list:
  """Every process's `obj` (JSON-serialisable), in process order (a collective call)."""
  if process_count() == 1:
    return [obj]
  import json

  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(row[:int(n)].tobytes()) for row, n in zip(rows, sizes.reshape(-1))]


def my_items(count: int) -> list[int]:
  """The indices in range(count) this process handles: i % process_count == process_index."""
  return list(range(process_index(), count, process_count()))


def global_batch(batch: dict, sharding_fn: Callable) -> dict:
  """This process's rows of a global batch -> global arrays (identity for one process)."""
  import jax
  if process_count() == 1:
    return batch
  return {k: jax.make_array_from_process_local_data(sharding_fn(v.ndim), v)
          for k, v in batch.items()}
