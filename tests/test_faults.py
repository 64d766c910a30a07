"""Fault injection on tiny runs: preemption signals, kill -9 during a save,
divergence and rollback, two runs on one workdir, workdir OS faults and bad
command lines. Every failure must be one line (no traceback) and leave the
checkpoints and metrics written before it intact.

Process-level behaviour (signals, stderr) runs `python -m jest_jax.main` in a
subprocess; the rest runs the trainer in-process.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jest_jax import config_lib
from jest_jax import metrics as metrics_lib
from jest_jax import run_guard
from jest_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
TINY = [
    "batch_size=16", "data.n_train=256", "data.n_curated=128",
    "data.n_retrieval=32", "data.n_zeroshot=48", "eval.batch_size=32",
    "log_every=1", f"eval_every={STEPS}", "checkpoint_every=4",
    "optim.warmup_steps=1", "keep_checkpoints=3",
]
CONFIG_ARG = f"configs/jest.py:method=iid,steps={STEPS}"
TIMING = ("train/examples_per_s", "train/step_seconds", "train/wall_seconds",
          "wall_seconds")
STOPPED = ("stopped at step {}, checkpoint saved; rerun the same command to "
           "resume")


def tiny_config(arg=f"method=iid,steps={STEPS}", *extra):
  return config_lib.apply_overrides(config_lib.load_config("jest", arg),
                              TINY + list(extra))


def cli_args(workdir, *extra):
  return ["-m", "jest_jax.main", "--config", CONFIG_ARG,
          *[f"--config.{item}" for item in TINY], *extra,
          "--workdir", str(workdir)]


def start(*args, **env_vars):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def run(*args):
  proc = start(*args)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def one_line_error(err):
  """The last stderr line, after checking there is no traceback."""
  assert "Traceback" not in err, err[-3000:]
  return err.strip().splitlines()[-1]


def rows_without_timing(workdir, skip=()):
  return [{k: v for k, v in row.items()
           if k not in TIMING and not k.startswith(skip)}
          for row in metrics_lib.read_metrics(str(workdir))]


def checkpoints(workdir):
  path = os.path.join(str(workdir), "checkpoints")
  return sorted(int(name) for name in os.listdir(path) if name.isdigit())


def wait_for_row(proc, workdir, step, timeout=300):
  """Waits until metrics.jsonl has `step`; returns the last logged step."""
  deadline = time.time() + timeout
  path = os.path.join(str(workdir), "metrics.jsonl")
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    if os.path.exists(path):
      rows = metrics_lib.read_metrics(str(workdir))
      if rows and rows[-1]["step"] >= step:
        return rows[-1]["step"]
    time.sleep(0.005)
  raise AssertionError(f"no metrics row for step {step}")


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The tiny run, once, without faults: (workdir, final params)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _, state = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, jax.device_get(state.params)


# ------------------------------------------------------------ preemption --


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_stops_in_one_line_and_resume_is_bit_identical(
    signum, uninterrupted, tmp_path):
  at = random.Random(int(signum)).randint(1, STEPS // 2)
  proc = start(*cli_args(tmp_path))
  wait_for_row(proc, tmp_path, at)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum
  last = one_line_error(err)
  stopped = int(last.split()[3].rstrip(","))
  assert last == STOPPED.format(stopped)
  assert at <= stopped < STEPS
  assert checkpoints(tmp_path)[-1] == stopped
  assert metrics_lib.read_metrics(str(tmp_path))[-1]["step"] == stopped

  code, _, err = run(*cli_args(tmp_path))  # The same command resumes.
  assert code == 0, err[-3000:]
  full_dir, full_params = uninterrupted
  assert rows_without_timing(tmp_path) == rows_without_timing(full_dir)
  params, step = train.restore_params(str(tmp_path))
  assert step == STEPS
  assert_same_params(params, full_params)


SLOW_STEPS = """
import os, sys, time
from jest_jax import input_pipeline
original = input_pipeline.TrainInput.batch
def batch(self, index):
  if index >= 5:  # Steps after 5 take seconds: time for a second signal.
    sys.stderr.write("loading a slow batch\\n")
    sys.stderr.flush()
    time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
  return original(self, index)
input_pipeline.TrainInput.batch = batch
from jest_jax import main
sys.argv = ["main"] + sys.argv[1:]
main.run()
"""


def test_second_signal_exits_at_once_keeping_checkpoints(tmp_path):
  # Both signals land while step 6's batch loads (30 s here): the first once
  # the loading has begun, the second once the run has taken the first.
  proc = start("-c", SLOW_STEPS, *cli_args(tmp_path)[2:], SLOW_SECONDS="30")
  err_lines = []
  reader = threading.Thread(
      target=lambda: err_lines.extend(iter(proc.stderr.readline, "")),
      daemon=True)
  reader.start()

  def wait_for(text):
    deadline = time.time() + 300
    while (not any(text in line for line in err_lines)
           and proc.poll() is None and time.time() < deadline):
      time.sleep(0.05)
    assert proc.poll() is None, "".join(err_lines)[-3000:]

  wait_for("loading a slow batch")  # Steps 1-5 done, checkpoint 4 written.
  proc.send_signal(signal.SIGINT)
  wait_for("SIGINT received")
  proc.send_signal(signal.SIGINT)
  proc.wait(timeout=300)
  reader.join(timeout=60)
  err = "".join(err_lines)
  assert proc.returncode == 128 + signal.SIGINT
  assert one_line_error(err).startswith(
      "error: second SIGINT: exiting now without a new checkpoint")
  assert 4 in checkpoints(tmp_path)
  train.restore_params(str(tmp_path), step=4)  # Still readable.


KILL_IN_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
  if self.get_final().name == "8":  # Checkpoint 8 written, not yet renamed.
    os.kill(os.getpid(), signal.SIGKILL)
  return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from jest_jax import main
sys.argv = ["main"] + sys.argv[1:]
main.run()
"""


def test_kill_9_during_a_save_resumes_to_the_uninterrupted_result(
    uninterrupted, tmp_path):
  code, _, _ = run("-c", KILL_IN_SAVE, *cli_args(tmp_path)[2:])
  assert code == -signal.SIGKILL
  assert checkpoints(tmp_path) == [4]
  assert any("tmp" in name for name in os.listdir(tmp_path / "checkpoints"))
  code, _, err = run(*cli_args(tmp_path))
  assert code == 0, err[-3000:]
  full_dir, full_params = uninterrupted
  assert rows_without_timing(tmp_path) == rows_without_timing(full_dir)
  assert_same_params(train.restore_params(str(tmp_path))[0], full_params)


# ------------------------------------------------------------ divergence --


def test_nan_is_never_checkpointed_and_rollback_resumes(uninterrupted,
                                                        tmp_path, monkeypatch):
  """A poisoned update at step 6 (after checkpoint 4): the error names
  checkpoint 4 and `--config.resume_step=4`; that resume, without the
  poison, gives the uninterrupted run's result."""
  original_update = train.StepFunctions.update

  def update(self, state, sub_batch, key):  # Step 6 yields NaN everywhere.
    state, metrics = original_update(self, state, sub_batch, key)
    poison = jax.numpy.where(state.step == 6, jax.numpy.nan, 1.0)
    params = jax.tree.map(lambda p: p * poison, state.params)
    metrics["train/loss"] = metrics["train/loss"] * poison
    return state.replace(params=params), metrics
  monkeypatch.setattr(train.StepFunctions, "update", update)
  with pytest.raises(run_guard.NonFiniteError) as info:
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  message = str(info.value)
  assert "at step 6" in message and "--config.resume_step=4" in message
  assert checkpoints(tmp_path) == [4]
  assert metrics_lib.read_metrics(str(tmp_path))[-1]["step"] == 5
  monkeypatch.undo()

  # A rerun without rollback resumes from 4 too (nothing later was saved);
  # with --config.resume_step=4 it is the documented command.
  _, state = train.train_and_evaluate(
      tiny_config(f"method=iid,steps={STEPS}", "resume_step=4"),
      str(tmp_path))
  full_dir, full_params = uninterrupted
  assert_same_params(jax.device_get(state.params), full_params)
  # (The poisoned program's FLOPs differ in the rows it logged.)
  assert (rows_without_timing(tmp_path, skip=("flops/",))
          == rows_without_timing(full_dir, skip=("flops/",)))


def test_rollback_deletes_later_checkpoints_once(uninterrupted, tmp_path,
                                                 monkeypatch):
  """Checkpoints 8 and 12 of an abandoned (here: perturbed) trajectory are
  replaced by the redone ones; the same command again does not roll back."""
  workdir = str(tmp_path)
  original_update = train.StepFunctions.update

  def update(self, state, sub_batch, key):  # Steps after 4 drift away.
    state, metrics = original_update(self, state, sub_batch, key)
    drift = jax.numpy.where(state.step > 4, 1e-3, 0.0)
    return state.replace(params=jax.tree.map(lambda p: p + drift,
                                             state.params)), metrics
  monkeypatch.setattr(train.StepFunctions, "update", update)
  train.train_and_evaluate(tiny_config(), workdir)
  monkeypatch.undo()
  assert checkpoints(workdir) == [4, 8, 12]
  rollback = tiny_config(f"method=iid,steps={STEPS}", "resume_step=4")
  train.train_and_evaluate(rollback, workdir)
  assert checkpoints(workdir) == [4, 8, 12]  # Redone from 4.
  assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == list(
      range(1, STEPS + 1))
  assert_same_params(train.restore_params(workdir)[0], uninterrupted[1])
  with open(os.path.join(workdir, run_guard.ROLLBACK_NAME)) as f:
    assert json.load(f) == {"resume_step": 4, "deleted": [8, 12]}
  # The same command again resumes from 12: it rolls nothing back.
  last = os.path.join(workdir, "checkpoints", "12")
  before = os.stat(last).st_mtime_ns
  summary, _ = train.train_and_evaluate(rollback, workdir)
  assert summary["step"] == STEPS
  assert os.stat(last).st_mtime_ns == before
  with pytest.raises(run_guard.WorkdirError, match="resume_step=5: no such "
                     "checkpoint.*kept: 4, 8, 12"):
    train.train_and_evaluate(
        tiny_config(f"method=iid,steps={STEPS}", "resume_step=5"), workdir)


def test_non_finite_scoring_embedding_stops_the_run(tmp_path, monkeypatch):
  """hard_learner scores with the learner alone; a NaN in its embeddings
  (top_k would rank it first) is caught although loss and grads are fine."""
  original = train.StepFunctions.score

  def score(self, params, super_batch):
    emb = original(self, params, super_batch)
    return emb._replace(image=emb.image.at[0, 0].set(jax.numpy.nan))
  monkeypatch.setattr(train.StepFunctions, "score", score)
  config = tiny_config("method=hard_learner,filter_ratio=0.5,steps=2",
                       "selection.n_chunks=4")
  with pytest.raises(run_guard.NonFiniteError,
                     match="at step 1.*no checkpoint was saved"):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoints(tmp_path) == []


# -------------------------------------------------------------- one writer --


def test_second_run_on_a_workdir_stops_naming_the_holder(tmp_path):
  proc = start("-c", SLOW_STEPS, *cli_args(tmp_path)[2:], SLOW_SECONDS="60")
  try:
    wait_for_row(proc, tmp_path, 5)  # Then it holds the workdir a minute.
    before = metrics_lib.read_metrics(str(tmp_path))
    code, _, err = run(*cli_args(tmp_path))
    assert code == 1
    assert one_line_error(err) == (
        f"error: workdir {tmp_path} is in use by another run (pid "
        f"{proc.pid} on {os.uname().nodename}, started "
        + err.split("started ")[-1].split(")")[0]
        + "); wait for it to end or pass another --workdir")
    after = metrics_lib.read_metrics(str(tmp_path))
    assert after[:len(before)] == before  # Not replaced under the first run.
  finally:
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # Now, not after the slow step.
    proc.communicate(timeout=300)


def test_lock_is_free_again_after_a_run_and_after_kill(tmp_path):
  workdir = str(tmp_path)
  lock = run_guard.WorkdirLock(workdir)
  lock.acquire()
  with pytest.raises(run_guard.WorkdirBusy, match=f"pid {os.getpid()}"):
    run_guard.WorkdirLock(workdir).acquire()
  lock.release()
  run_guard.WorkdirLock(workdir).acquire()  # A released lock is free.


def test_object_store_lease_refuses_a_live_holder(fake_gcs):
  del fake_gcs
  workdir = "gs://bucket/run"
  run_guard.make_workdir(workdir)
  lock = run_guard.WorkdirLock(workdir)
  lock.acquire()
  with pytest.raises(run_guard.WorkdirBusy, match="in use by another run"):
    run_guard.WorkdirLock(workdir).acquire()
  lock.release()
  run_guard.WorkdirLock(workdir).acquire()


# ------------------------------------------------------------ OS faults --


def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_at_a_save_is_one_error_keeping_checkpoints_and_metrics(
    tmp_path, monkeypatch):
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 8:
      _enospc()
    return original(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(run_guard.WorkdirError,
                     match="the disk is full .ENOSPC.*already in"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert checkpoints(tmp_path) == [4]
  assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == list(
      range(1, 9))
  train.restore_params(str(tmp_path), step=4)


FULL_DISK_CLI = """
import errno, sys
from jest_jax import metrics
def write(self, step, scalars):
  if step == 3:
    raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
  return original(self, step, scalars)
original = metrics.MetricWriter.write
metrics.MetricWriter.write = write
from jest_jax import main
sys.argv = ["main"] + sys.argv[1:]
main.run()
"""


def test_full_disk_from_the_cli_is_one_line(tmp_path):
  code, _, err = run("-c", FULL_DISK_CLI, *cli_args(tmp_path)[2:])
  assert code == 1
  assert one_line_error(err) == (
      f"error: cannot write {tmp_path}/metrics.jsonl: the disk is full "
      f"(ENOSPC); free space or fix the permissions, or pass another "
      f"--workdir (checkpoints and metrics already in {tmp_path} are kept)")
  assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == [1, 2]


def test_read_only_workdir_is_one_error(tmp_path, monkeypatch):
  """Read-only: the first write (the lock) fails with EROFS; simulated,
  since root may write a chmod-ed directory."""
  real_open = open

  def read_only_open(path, mode="r", *args, **kwargs):
    if str(path).startswith(str(tmp_path)) and any(c in mode for c in "wa+"):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, mode, *args, **kwargs)
  monkeypatch.setattr("builtins.open", read_only_open)
  with pytest.raises(run_guard.WorkdirError,
                     match="read-only file system .EROFS."):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  monkeypatch.undo()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("keep me")
  code, _, err = run(*cli_args(path))
  assert code == 1
  assert one_line_error(err) == (
      f"error: --workdir {path} is an existing file, not a directory; pass a "
      "directory path")
  assert path.read_text() == "keep me"


# ------------------------------------------------------- bad command lines --


@pytest.mark.parametrize("config_arg, extra, message", [
    ("configs/jest.py:filtr_ratio=0.5", [],
     "unknown config argument 'filtr_ratio'; did you mean filter_ratio?"),
    ("configs/jest.py:steps=ten", [],
     "config argument steps='ten': expected int"),
    ("configs/jest.py:method=jset", [],
     "config argument method='jset': use one of"),
    ("configs/jest.py:method=iid", ["--config.optim.learning_rate=0.1"],
     "unknown config key --config.optim.learning_rate; did you mean "
     "--config.optim.lr?"),
    ("configs/jest.py:method=iid", ["--config.total_steps=ten"],
     "flag --config.total_steps=ten: invalid literal"),
    ("configs/jest.py:method=iid", ["--config.selection.filter_ratio=0.5"],
     "config.selection.filter_ratio=0.5: uniform (IID) runs"),
    ("configs/jest.py:method=iid", ["--config.resume_step=-1"],
     "config.resume_step=-1: must be a checkpoint step"),
])
def test_bad_config_is_one_line_and_creates_nothing(config_arg, extra, message,
                                                    tmp_path):
  workdir = tmp_path / "run"
  code, _, err = run("-m", "jest_jax.main", "--config", config_arg, *extra,
                     "--workdir", str(workdir))
  assert code != 0
  assert one_line_error(err).startswith("error: " + message), err
  assert len(err.strip().splitlines()) == 1, err
  assert not workdir.exists()


def test_missing_reference_workdir_gets_no_checkpoints_folder(tmp_path):
  missing = tmp_path / "no_such_reference"
  with pytest.raises(train.TrainingError, match="no checkpoints folder"):
    train.restore_params(str(missing))
  assert not missing.exists()


def test_failed_run_leaves_no_workdir_it_created(tmp_path):
  """A run that fails after the workdir is taken but before its first step
  (here: the reference checkpoint is missing) removes what it created."""
  workdir = tmp_path / "run"
  config = tiny_config("method=jest,filter_ratio=0.5,steps=2",
                       "selection.n_chunks=4",
                       f"reference.cache_dir={tmp_path / 'cache'}",
                       f"reference.workdir={tmp_path / 'no_reference'}")
  with pytest.raises(train.TrainingError, match="no checkpoints folder"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  assert not (tmp_path / "no_reference").exists()
