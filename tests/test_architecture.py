"""The walls between packages (`.importlinter`), and that crossing one is caught."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = pathlib.Path(sys.executable).parent / "lint-imports"


def _lint(cwd: pathlib.Path) -> subprocess.CompletedProcess:
  # PYTHONPATH first, so that a copy of the package in `cwd` wins over the installed one.
  env = {**os.environ, "PYTHONPATH": str(cwd)}
  return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_contracts_are_kept():
  r = _lint(ROOT)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "0 broken" in r.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("sampling/filters.py", "import rest_jax.training.step", "Layers"),
    ("models/params.py", "from rest_jax.loop import rest_em", "Layers"),
    ("tokenizers/base.py", "import rest_jax.models.config", "Layers"),
    ("verifiers/verdict.py", "import jax", "verifiers import no jax"),
])
def test_a_crossed_wall_breaks_the_lint(tmp_path, module, line, contract):
  shutil.copytree(ROOT / "rest_jax", tmp_path / "rest_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
  target = tmp_path / "rest_jax" / module
  target.write_text(target.read_text() + f"\n{line}  # crossing a wall on purpose\n")
  r = _lint(tmp_path)
  assert r.returncode != 0, r.stdout
  assert "1 broken" in r.stdout, r.stdout
  assert contract in r.stdout.split("Broken contracts")[1], r.stdout


def test_only_the_mesh_module_names_mesh_axes():
  offenders = []
  for path in (ROOT / "rest_jax").rglob("*.py"):
    if path.relative_to(ROOT).as_posix() == "rest_jax/runtime/mesh.py":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and node.value in ("fsdp", "tensor"):
        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
  assert not offenders, offenders
