"""Sampling on the shared, mesh-partitioned state across processes (runtime/sample_placement.py).

2 CPU processes x 4 devices joined with gloo, against one process x 8 devices on the same
mesh shape: both placements draw exactly the same completions, including on a mesh whose
tensor axis spans the two processes, and neither makes a host copy of the parameters.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

import run_helpers as rh

WORKER = os.path.join(os.path.dirname(__file__), "placement_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", PYTHONPATH=rh.REPO)


def _one_process(tmp_path, shape) -> dict:
  out = tmp_path / f"one_{'x'.join(map(str, shape))}.json"
  r = subprocess.run([sys.executable, WORKER, str(out), "auto", json.dumps(shape)],
                     env=_env(8), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(out.read_text())


def _two_processes(tmp_path, placements, shape) -> list[dict]:
  port = _free_port()
  outs = [tmp_path / f"two_{i}.json" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, WORKER, str(outs[i]), placements, json.dumps(shape),
                             str(i), "2", str(port)], env=_env(4), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  return [json.loads(o.read_text()) for o in outs]


# The tensor axis spans both processes here; test_multihost.py runs the whole loop with the
# fsdp axis across them, in both placements.
@pytest.mark.parametrize("shape", [(1, 1, 8)], ids=["tensor_across"])
def test_both_placements_draw_the_samples_of_one_process(tmp_path, shape):
  one = _one_process(tmp_path, list(shape))["auto"]
  assert one["placement"] == "global" and one["same_arrays"]

  two = _two_processes(tmp_path, "per_host,global", list(shape))
  for placement in ("per_host", "global"):
    reports = [t[placement] for t in two]
    for i, r in enumerate(reports):
      assert r["placement"] == placement and r["mesh"] == one["mesh"]
      assert r["gather_refused"], "the transfer guard did not catch a host gather"
      if placement == "global":
        # The training arrays themselves, on all 8 devices: no copy at all.
        assert r["same_arrays"] and r["param_devices"] == r["all_devices"]
        assert len(r["all_devices"]) == 8
        assert r["sample_mesh"] == one["mesh"]
        assert r["samples"] == one["samples"], f"process {i}"
      else:
        # A replica on this process's own 4 devices (tensor kept when 4 divides by it).
        assert not r["same_arrays"] and r["param_devices"] == r["local_devices"]
        assert len(r["local_devices"]) == 4
        assert r["sample_mesh"]["data"] == 1 and r["sample_mesh"]["fsdp"] * r["sample_mesh"][
            "tensor"] == 4
    if placement == "per_host":
      merged = {**reports[0]["samples"], **reports[1]["samples"]}
      assert set(reports[0]["samples"]).isdisjoint(reports[1]["samples"])
      assert merged == one["samples"]
