"""The runtime every job stands on: devices, processes, and files.

* `mesh`: the device mesh and the logical-axis rules (the only module that names mesh axes);
* `distributed`: multi-process start-up, barriers, which process does what;
* `preemption`: stopping every process at a safe point after SIGTERM;
* `checkpoints`: orbax checkpoints of params and train states, restored onto any mesh;
* `workdir`: the run directory, atomic writes and `state.json`;
* `telemetry`: `metrics.jsonl` and TensorBoard events.

May import: nothing of rest_jax.
"""

from rest_jax.runtime.checkpoints import CheckpointManager
from rest_jax.runtime.distributed import DistributedError, ProcessGroup
from rest_jax.runtime.mesh import MESH_AXES, create_mesh
from rest_jax.runtime.preemption import Preempted
from rest_jax.runtime.telemetry import MetricsLog
from rest_jax.runtime.workdir import RunState, Workdir

__all__ = ["MESH_AXES", "CheckpointManager", "DistributedError", "MetricsLog", "Preempted",
           "ProcessGroup", "RunState", "Workdir", "create_mesh"]
