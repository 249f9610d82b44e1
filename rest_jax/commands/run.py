"""`rest-jax run --gin_file=F [--gin.X=V ...]`: the whole loop; resumes an existing WORKDIR.

On a pod every host runs the same command. TPU VMs join the process group by themselves;
elsewhere pass `--coordinator_address/--num_processes/--process_id` (or the
`REST_JAX_*` environment variables). SIGTERM stops every process at the next safe point
(exit status 143); rerunning the same command resumes.
"""

from __future__ import annotations

import json

from rest_jax.commands import gin_flags


def add_arguments(parser):
  gin_flags.add_flags(parser)
  parser.add_argument("--print_config", action="store_true",
                      help="parse the gin files and bindings, print the resolved config and exit "
                           "(runs nothing, needs no WORKDIR)")
  add_process_flags(parser)


def add_process_flags(parser):
  """--coordinator_address ... of a multi-process job (`run` and `eval`)."""
  group = parser.add_argument_group("multi-process jobs (automatic on TPU VMs)")
  group.add_argument("--coordinator_address", default=None,
                     help="host:port of process 0's coordinator (env REST_JAX_COORDINATOR_ADDRESS)")
  group.add_argument("--num_processes", type=int, default=None,
                     help="processes in the job (env REST_JAX_NUM_PROCESSES)")
  group.add_argument("--process_id", type=int, default=None,
                     help="this process's rank, 0-based (env REST_JAX_PROCESS_ID)")
  group.add_argument("--init_timeout", type=int, default=None,
                     help="seconds to wait for every process to join (default 300; env "
                          "REST_JAX_INIT_TIMEOUT)")
  group.add_argument("--heartbeat_timeout", type=int, default=None,
                     help="seconds without a heartbeat before a process counts as dead "
                          "(default 100)")


def start_processes(args) -> None:
  """Joins the process group of `add_process_flags` (before anything initialises a JAX
  backend) and turns SIGTERM into a stop at the next safe point. A group that does not form
  raises `DistributedError` (cli: one line, exit status 1)."""
  from rest_jax.runtime import distributed as dist
  from rest_jax.runtime import preemption
  dist.initialize(dist.ProcessGroup.from_env(
      coordinator_address=args.coordinator_address, num_processes=args.num_processes,
      process_id=args.process_id, init_timeout_s=args.init_timeout,
      heartbeat_timeout_s=args.heartbeat_timeout))
  preemption.install()


def main(args) -> int:
  if args.print_config:
    import gin
    gin_flags.configure_gin(args)
    print(gin.config_str(), end="")
    return 0
  from rest_jax.runtime import distributed as dist
  start_processes(args)
  gin_flags.configure_gin(args)
  from rest_jax.loop import run as run_lib
  # Bad settings, inputs, a preemption: cli maps each to one line and its exit status.
  result = run_lib.run()
  if dist.is_writer():
    print(json.dumps(result, indent=1, default=str))
  return 0
