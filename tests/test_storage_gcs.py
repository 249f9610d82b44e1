"""Every path a user gives, on gs:// (fake-gcs-server, see gcs_server.py): model specs (a
Hugging Face directory, an orbax checkpoint), `export --out`, `eval --output`, a JSONL task
file, `train-rm --input/--output`; writes that suit object storage; one-line errors.

The loop's own WORKDIR on gs:// is tested where the loop is: test_loop_resume.py (killed and
resumed; the endpoint stopped mid-run) and test_multihost.py (2 processes, both placements).
"""

import json
import logging

import pytest
from etils import epath

from rest_jax import cli
from rest_jax.models.hf_export import export_hf
from rest_jax.models.loading import load_model, model_config_of, save_model_checkpoint
from rest_jax.runtime import storage, telemetry
from test_weights_io import CONFIGS, _assert_params_equal, _random_model


@pytest.fixture(scope="module")
def bucket(gcs):
  return epath.Path(gcs.make_bucket("paths"))


def test_a_model_on_a_bucket_as_hf_directory_and_checkpoint_and_export(gcs, bucket, capsys):
  model = _random_model(CONFIGS["qwen2"], seed=3)
  export_hf(model, bucket / "hf")
  names = gcs.objects("paths", "hf/")
  assert {"hf/config.json", "hf/model.safetensors", "hf/tokenizer.json"} <= set(names)
  assert not any(".tmp" in n for n in names)

  loaded = load_model(str(bucket / "hf"))
  assert loaded.source == str(bucket / "hf") and loaded.config == model.config
  _assert_params_equal(model.params, loaded.params)
  assert loaded.tokenizer.encode("a b") == model.tokenizer.encode("a b")
  cfg, _ = model_config_of(str(bucket / "hf"))
  assert cfg == model.config

  save_model_checkpoint(loaded, bucket / "ckpts", step=3, prefix="iter")
  again = load_model(str(bucket / "ckpts"))   # read in place by orbax/tensorstore
  _assert_params_equal(model.params, again.params)

  rc = cli.main(["export", f"--checkpoint={bucket / 'ckpts'}", f"--out={bucket / 'exported'}"])
  assert rc == 0, capsys.readouterr().err
  assert json.loads(capsys.readouterr().out)["out"] == str(bucket / "exported")
  _assert_params_equal(model.params, load_model(str(bucket / "exported")).params)


def test_eval_with_models_task_file_and_output_on_a_bucket(gcs, bucket, capsys):
  model = _random_model(CONFIGS["llama"], seed=4)
  export_hf(model, bucket / "eval_model")
  save_model_checkpoint(model, bucket / "eval_baseline")
  storage.write_text(bucket / "data" / "problems.jsonl", "".join(
      json.dumps({"id": f"q{i}", "prompt": f"{i} + {i} = ?", "answer": str(2 * i)}) + "\n"
      for i in range(5)))
  out = bucket / "evals" / "first"
  rc = cli.main(["eval", f"--model={bucket / 'eval_model'}",
                 f"--baseline={bucket / 'eval_baseline'}", "--task=jsonl",
                 f"--gin.jsonl_task.path='{bucket / 'data' / 'problems.jsonl'}'",
                 "--gin.jsonl_task.num_test=3", "--greedy", "--max_new_tokens=4",
                 f"--output={out}"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["problems"] == 3 and "baseline" in metrics
  shards = [n for n in gcs.objects("paths", "evals/first/") if "/shard-" in n]
  assert shards and all(n.startswith(("evals/first/model/", "evals/first/baseline/"))
                        for n in shards)


def test_train_rm_reads_and_writes_a_bucket(gcs, bucket, capsys):
  model = _random_model(CONFIGS["llama"], seed=6)
  export_hf(model, bucket / "rm_base")
  storage.write_text(bucket / "rm" / "scored.jsonl", "".join(
      json.dumps({"prompt_id": f"p{i % 4}", "prompt": f"{i} + 1 =",
                  "completion": str(i + 1 if i % 2 else i), "reward": float(i % 2)}) + "\n"
      for i in range(16)))
  rc = cli.main(["train-rm", f"--model={bucket / 'rm_base'}",
                 f"--input={bucket / 'rm' / 'scored.jsonl'}", f"--output={bucket / 'rm' / 'out'}",
                 "--steps=2", "--batch_size=4", "--seq_len=16", "--heldout_fraction=0.25"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err[-3000:]
  assert any(n.startswith("rm/out/0/params/") for n in gcs.objects("paths", "rm/out/"))
  # The output is not empty any more: a second run into it is refused, in one line.
  rc = cli.main(["train-rm", f"--model={bucket / 'rm_base'}",
                 f"--input={bucket / 'rm' / 'scored.jsonl'}", f"--output={bucket / 'rm' / 'out'}",
                 "--steps=1"])
  assert rc == 2 and "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "--gin_file=runs/demo.gin", "--gin.WORKDIR='gs://no-such-bucket/run'"],
    ["eval", "--model=nano", "--greedy", "--output=gs://no-such-bucket/eval"],
])
def test_a_missing_bucket_is_one_line_before_any_work(gcs, argv, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert "gs://no-such-bucket/" in err and "the bucket gs://no-such-bucket does not exist" in err


def test_writes_are_single_objects_and_metrics_go_to_parts(gcs, bucket, caplog):
  storage.write_text(bucket / "w" / "a.json", "1")
  storage.write_text(bucket / "w" / "a.json", "2")   # replaced whole; no rename, no ERROR
  assert (bucket / "w" / "a.json").read_text() == "2"
  assert gcs.objects("paths", "w/") == ["w/a.json"]

  with caplog.at_level(logging.INFO):
    log = telemetry.MetricsLog(bucket / "m", flush_s=3600)
    log.write(1, {"loss": 1.0}, phase="train")
    log.write(2, {"loss": 0.5}, phase="train")
    assert gcs.objects("paths", "m/") == []   # buffered until a flush
    log.flush()
    log.write(3, {"loss": 0.25}, phase="train")
    log.close()
    # A resumed run's log goes on after the parts already there.
    log = telemetry.MetricsLog(bucket / "m", flush_s=0)
    log.write(4, {"loss": 0.125}, phase="train")   # flush_s=0: written at once
    log.close()
  names = gcs.objects("paths", "m/")
  parts = [n for n in names if n.startswith("m/metrics/")]
  assert parts == [f"m/metrics/part-{i:05d}.jsonl" for i in range(3)]
  assert len([n for n in names if n.startswith("m/tensorboard/events.out.tfevents.")]) == 3
  assert [r["step"] for r in telemetry.read_metrics(bucket / "m")] == [1, 2, 3, 4]
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_short_outage_is_retried_and_the_write_lands(gcs, bucket, caplog):
  """The endpoint refuses connections for 2 seconds: gcsfs's retries (with backoff) carry the
  write over it, with no error logged."""
  import threading
  import time
  gcs.stop()
  restart = threading.Thread(target=lambda: (time.sleep(2.0), gcs.start()))
  restart.start()
  try:
    with caplog.at_level(logging.WARNING):
      storage.write_text(bucket / "retried" / "state.json", '{"ok": true}')
  finally:
    restart.join()
  assert json.loads((bucket / "retried" / "state.json").read_text()) == {"ok": True}
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_verify_reads_and_writes_a_bucket(gcs, bucket, capsys):
  storage.write_text(bucket / "verify" / "in.jsonl", "".join(json.dumps(r) + "\n" for r in [
      {"id": "ok", "completion": "#### 4", "answer": "4"},
      {"id": "wrong", "completion": "#### 5", "answer": "4"}]))
  rc = cli.main(["verify", f"--input={bucket / 'verify' / 'in.jsonl'}",
                 f"--output={bucket / 'verify' / 'out.jsonl'}", "--workers=1"])
  assert rc == 0, capsys.readouterr().err
  rows = [json.loads(l) for l in (bucket / "verify" / "out.jsonl").read_text().splitlines()]
  assert [(r["id"], r["verdict"]) for r in rows] == [("ok", "pass"), ("wrong", "fail")]
  rc = cli.main(["verify", f"--input={bucket / 'verify' / 'missing.jsonl'}"])
  assert rc == 2 and "verify/missing.jsonl: no such file" in capsys.readouterr().err


def test_sample_logprobs_and_tasks_take_gs_paths(gcs, bucket, capsys):
  """The other commands that take a path: `sample` and `logprobs` --model, and a JSONL task
  file previewed by `tasks show`; each gives what the same local input gives."""
  model = _random_model(CONFIGS["llama"], seed=7)
  export_hf(model, bucket / "small")
  assert cli.main(["logprobs", f"--model={bucket / 'small'}", "--text", "abc"]) == 0
  remote = json.loads(capsys.readouterr().out)
  local = storage.local_copy(bucket / "small")   # the cached copy load_model made
  assert cli.main(["logprobs", f"--model={local}", "--text", "abc"]) == 0
  assert json.loads(capsys.readouterr().out)["logprobs"] == remote["logprobs"]

  assert cli.main(["sample", f"--model={bucket / 'small'}", "--prompt", "a", "-k", "2",
                   "--max_new_tokens", "3", "--seed", "1"]) == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert len(rows) == 2 and all(len(r["tokens"]) <= 3 for r in rows)

  storage.write_text(bucket / "tasks" / "mine.jsonl", "".join(
      json.dumps({"id": f"t{i}", "prompt": f"{i} * 2 = ?", "answer": str(2 * i)}) + "\n"
      for i in range(3)))
  assert cli.main(["tasks", "show", "jsonl",
                   f"--gin.jsonl_task.path='{bucket / 'tasks' / 'mine.jsonl'}'",
                   "--gin.jsonl_task.num_test=0", "-n", "3"]) == 0
  out = capsys.readouterr().out
  assert "=== t2 ===" in out and "3 problems in split 'train'" in out


def test_no_permission_is_one_line_naming_the_path(tmp_path):
  """A storage endpoint that refuses every request with 403 (as GCS does for an account
  without access; the emulator has no IAM): one line naming the path, exit 2."""
  import http.server
  import os
  import subprocess
  import sys
  import threading

  class Forbidden(http.server.BaseHTTPRequestHandler):
    def _deny(self):
      body = json.dumps({"error": {"code": 403, "message": "rest@example.iam does not have "
                                   "storage.objects.create access"}}).encode()
      self.send_response(403)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{server.server_port}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "rest_jax.cli", "eval", "--model=nano",
                          "--greedy", "--output=gs://locked/eval"], capture_output=True,
                         text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  finally:
    server.shutdown()
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("rest-jax eval:")]
  assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert lines[0].startswith("rest-jax eval: gs://locked/eval: cannot write there: permission "
                             "denied"), lines[0]


def test_only_storage_failures_become_storage_errors():
  """`storage.errors` names the path for what a storage library raised; the project's own
  errors and bugs pass unchanged, and local paths are never rewritten."""
  from rest_jax.loop.config import RunSettingError

  def through(path, exc):
    try:
      with storage.errors(path, "go on"):
        raise exc
    except Exception as e:  # noqa: BLE001
      return e

  wrapped = through("gs://b/w", ConnectionRefusedError("refused"))
  assert isinstance(wrapped, storage.StorageError)
  assert str(wrapped) == "gs://b/w: cannot go on: cannot reach the storage endpoint (refused)"
  plain = OSError("Forbidden: https://x\nno access")
  assert through("gs://b/w", plain) is plain  # not from a storage library, no gs:// in it
  assert "permission denied (no access)" in storage.describe(OSError("Forbidden: u\nno access"))
  own = RunSettingError("LoopConfig.x is bad for gs://b/w")
  assert through("gs://b/w", own) is own
  bug = KeyError("x")
  assert through("gs://b/w", bug) is bug
  local = ConnectionRefusedError("refused")
  assert through("/tmp/w", local) is local



def test_a_403_from_gcsfs_is_one_storage_error():
  """gcsfs raises a 403 as a plain OSError('Forbidden: URL\\nmessage') from its own code
  (gcsfs.retry): met inside `storage.errors`, it is one line naming the object."""
  gcsfs_code = {"__name__": "gcsfs.retry"}
  exec("def validate_response():\n"   # noqa: S102 - a function that lives in gcsfs's module
       "    raise OSError('Forbidden: http://127.0.0.1/upload/storage/v1/b/b/o\\n'\n"
       "                  'rest@example.iam does not have storage.objects.create access')\n",
       gcsfs_code)
  with pytest.raises(storage.StorageError) as e:
    with storage.errors("gs://b/locked/state.json", "write it"):
      gcsfs_code["validate_response"]()
  assert str(e.value) == ("gs://b/locked/state.json: cannot write it: permission denied "
                          "(rest@example.iam does not have storage.objects.create access)")
