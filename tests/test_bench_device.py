"""bench/device.sh, the GPU benchmark, runs end to end (--dry_run: toy sizes on the CPU)."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_device_benchmark_dry_run(tmp_path):
  env = {**os.environ, "OUT": str(tmp_path)}
  r = subprocess.run(["bash", "bench/device.sh", "--dry_run"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rows = (tmp_path / "device_results.md").read_text()
  for figure in ("train step", "decode, batch 1", "sampler", "shared prefix", "loop Generate"):
    assert f"| {figure} |" in rows, rows
  assert "tokens/s" in rows and "error" not in rows
