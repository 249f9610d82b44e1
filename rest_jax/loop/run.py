"""`rest-jax run`: the gin-configured entry point of the whole loop."""

from __future__ import annotations

import logging

import gin

from rest_jax.loop import rest as rest_lib
from rest_jax.loop import rest_em as loop_lib
from rest_jax.runtime import mesh as mesh_lib
from rest_jax.runtime import storage

log = logging.getLogger(__name__)


@gin.configurable
def run(workdir: str = gin.REQUIRED) -> dict:
  """Runs (or resumes) the ReST-EM loop configured by gin in `workdir`.

  With WORKDIR on a bucket, a bucket that cannot be written fails here, before any work; a
  storage failure later (after the storage library's retries) ends the run with one line that
  names WORKDIR, and what was finished stays recorded for the rerun."""
  storage.check_writable(workdir)
  with storage.errors(workdir, "go on with the run in it"):
    return _run(workdir)


def _run(workdir: str) -> dict:
  mesh = mesh_lib.create_mesh()
  log.info("mesh: %s", mesh_lib.describe(mesh))
  cfg = loop_lib.LoopConfig(workdir=workdir)
  if cfg.mode == "rest":
    loop = rest_lib.ReSTLoop(cfg, mesh)  # the original ReST: reward-scored Grow, Improves
  else:
    loop = loop_lib.Loop(cfg, mesh)
  loop.check_config(gin.config_str())
  return loop.run()
