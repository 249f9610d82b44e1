"""A wheel (what `pip install .` installs) ships configs/: `--gin_file=runs/demo.gin` resolves
outside the checkout, through the installed `rest-jax`, to the same config as in the checkout.

The wheel is built offline from a copy of the sources and installed without dependencies into
a fresh venv that sees this venv's packages (jax, gin, ...) through a .pth file. A .pth in a
directory added by a .pth is not processed, so the editable install of this checkout does not
leak in.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import gin

from rest_jax import cli
from rest_jax.commands import gin_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(os.path.join(d, f), os.path.join(REPO, "configs"))
                 for d, _, files in os.walk(os.path.join(REPO, "configs"))
                 for f in files if f.endswith(".gin"))

# Runs in the fresh venv: every config through the installed CLI, in one process.
PRINT_ALL = """
import contextlib, io, json, sys
from rest_jax import cli
out = {}
for name in sys.argv[1:]:
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = cli.main(["run", "--gin_file=" + name, "--print_config"])
  out[name] = [rc, buf.getvalue()]
print(json.dumps(out))
"""


def _pip(*args, cwd):
  env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
  subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, check=True,
                 capture_output=True, text=True, timeout=300)


def test_wheel_install_finds_every_config(tmp_path):
  assert {"runs/demo.gin", "runs/rest_rm_math.gin", "models/tiny.gin"} <= set(CONFIGS)
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  for name in ("rest_jax", "configs"):
    shutil.copytree(os.path.join(REPO, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  _pip("wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q", "-w",
       str(tmp_path / "dist"), str(src), cwd=tmp_path)
  (wheel,) = (tmp_path / "dist").glob("rest_jax-*.whl")

  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  python = str(venv / "bin" / "python")
  # Installed before the .pth exists, so pip sees (and touches) nothing of this venv.
  _pip("--python", python, "install", "--no-deps", "--no-index", "-q", str(wheel), cwd=tmp_path)
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(site, "_rest_jax_test_deps.pth"), "w") as f:
    f.write("\n".join(sorted(ours)) + "\n")

  elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing to find configs/ relative to
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = subprocess.run(
      [python, "-c", "import rest_jax.commands.gin_flags as g; print(g.__file__); "
       "print(g.CONFIGS_DIR)"], cwd=elsewhere, env=env, check=True, capture_output=True,
      text=True).stdout.split()
  assert where[0].startswith(site) and where[1] == os.path.join(site, "rest_jax", "configs")

  # The installed console script, on a config with an include.
  demo = subprocess.run([str(venv / "bin" / "rest-jax"), "run", "--gin_file=runs/demo.gin",
                         "--print_config"], cwd=elsewhere, env=env, capture_output=True,
                        text=True, timeout=300)
  assert demo.returncode == 0, demo.stderr[-2000:]
  assert "LoopConfig.model = 'nano'" in demo.stdout  # from the included models/nano.gin

  # Every config, through the installed CLI, resolves to what the checkout resolves.
  run = subprocess.run([python, "-c", PRINT_ALL, *CONFIGS], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  installed = json.loads(run.stdout.strip().splitlines()[-1])
  cli.gin_flags.import_configurables()
  for name in CONFIGS:
    gin_flags.parse([name], [])
    rc, text = installed[name]
    assert rc == 0 and text == gin.config_str(), name
