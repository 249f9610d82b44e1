"""One process of tests/test_sample_placement.py: samples a fixed set of prompts with the tiny
model and writes what it drew as JSON.

argv: OUT PLACEMENTS (comma-separated) MESH_SHAPE [PROCESS_ID NUM_PROCESSES PORT]. Without the last three it is
one process over all its devices. The params are made on the global mesh (as training leaves
them), then placed for sampling by runtime.sample_placement.
"""

import contextlib
import json
import sys

out, placements, shape = sys.argv[1], sys.argv[2], tuple(json.loads(sys.argv[3]))
multi = len(sys.argv) > 4

import jax  # noqa: E402

if multi:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{sys.argv[6]}", int(sys.argv[5]), int(sys.argv[4]))

from rest_jax.models import loading  # noqa: E402
from rest_jax.models import params as params_lib  # noqa: E402
from rest_jax.runtime import distributed as dist  # noqa: E402
from rest_jax.runtime import mesh as mesh_lib  # noqa: E402
from rest_jax.runtime import sample_placement  # noqa: E402
from rest_jax.sampling.sampler import Sampler, SamplingParams  # noqa: E402

mesh = mesh_lib.create_mesh(shape)
model = loading.load_model("tiny", mesh, seed=3)


# A host copy has to come back onto the devices: the host-to-device guard catches that on
# every platform (the device-to-host one only on accelerators: CPU arrays are host memory).
@contextlib.contextmanager
def no_host_copies():
  with jax.transfer_guard_host_to_device("disallow_explicit"), \
      jax.transfer_guard_device_to_host("disallow_explicit"):
    yield


def sample(placement: str) -> dict:
  chosen = sample_placement.resolve(placement, mesh, model.params, "float32")
  sample_mesh = sample_placement.sampling_mesh(mesh, chosen)
  report = {"placement": chosen, "sample_mesh": dict(sample_mesh.shape),
            "mesh": dict(mesh.shape), "process": dist.process_index()}
  with no_host_copies():
    params = sample_placement.to_sampling_mesh(model.params, mesh, sample_mesh,
                                               params_lib.shardings)
    if multi:
      from jax.experimental import multihost_utils
      x, placed = jax.tree.leaves(model.params)[0], jax.tree.leaves(params)[0]
      try:   # what a host-RAM gather does: the check must catch it
        jax.device_put(multihost_utils.process_allgather(x, tiled=True), placed.sharding)
        report["gather_refused"] = False
      except Exception as e:  # pylint: disable=broad-except
        report["gather_refused"] = "Disallowed host-to-device transfer" in str(e)
  report["local_devices"] = sorted(d.id for d in jax.local_devices())
  report["all_devices"] = sorted(d.id for d in jax.devices())
  report["param_devices"] = sorted({d.id for x in jax.tree.leaves(params) for d in x.devices()})
  report["same_arrays"] = all(a is b for a, b in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(model.params)))

  tok = model.tokenizer
  prompts = [tok.encode(f"{a} + {b} =") for a, b in [(1, 2), (3, 4), (5, 6), (12, 7), (8, 9),
                                                      (40, 2)]]
  keys = list(range(100, 100 + len(prompts)))
  # per_host: each process samples its own prompts (as the loop's shards); global: all together.
  mine = (list(range(len(prompts))) if chosen == "global" or not multi
          else dist.my_items(len(prompts)))
  sampler = Sampler(model.graphdef, model.config, tok, sample_mesh, num_slots=8)
  groups = sampler.generate(params, [prompts[i] for i in mine], num_samples=3,
                            sampling=SamplingParams(temperature=1.0, max_new_tokens=12), seed=7,
                            prompt_keys=[keys[i] for i in mine])
  report["samples"] = {str(i): [c.tokens for c in g] for i, g in zip(mine, groups)}
  return report


with open(out, "w") as f:
  json.dump({p: sample(p) for p in placements.split(",")}, f)
