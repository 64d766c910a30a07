"""Multi-host training as several CPU processes (gloo collectives).

Two `jest_jax.main` processes with 4 simulated CPU devices each form one
8-device mesh; they must train exactly what one process with 8 devices
trains (the same global super-batch, selection and update each step), and a
preempted 2-process run must resume to the same result.
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

from jest_jax import metrics as metrics_lib
from jest_jax import train
# The tiny settings of the single-process tests (`reference_run` is in
# conftest.py).
from test_train import ROOT, TINY, jest_config, params_close

STEPS = 4
JEST_ARG = f"method=jest,filter_ratio=0.5,steps={STEPS}"


def launch(num_processes, devices_per_process, args, timeout=300):
  """Runs `python -m jest_jax.main ARGS` as `num_processes` processes of one
  multi-process JAX run; returns their CompletedProcess-like results."""
  port = portpicker.pick_unused_port()
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"{xla_flags} --xla_force_host_platform_device_count="
      f"{devices_per_process}"))
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jest_jax.main", *args,
       f"--coordinator=localhost:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(num_processes)]
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      results.append((proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for i, (code, _, err) in enumerate(results):
    assert code == 0, f"process {i}:\n{err[-3000:]}"
  return results


def cli_args(reference_run, workdir, *extra):
  ref_workdir, cache_dir = reference_run
  return ["--config", f"configs/jest.py:{JEST_ARG}",
          *[f"--config.{item}" for item in TINY],
          f"--config.reference.cache_dir={cache_dir}",
          f"--config.reference.workdir={ref_workdir}",
          *extra, "--workdir", str(workdir)]


def losses(workdir):
  return [r["train/loss"] for r in metrics_lib.read_metrics(str(workdir))]


@pytest.fixture(scope="module")
def one_process_run(reference_run, tmp_path_factory):
  """The 1-process x 8-device run the multi-process runs must equal."""
  assert len(jax.devices()) == 8
  workdir = tmp_path_factory.mktemp("one_process")
  _, state = train.train_and_evaluate(
      jest_config(reference_run, steps=STEPS), str(workdir))
  return workdir, state


def test_two_processes_resumed_equal_one_process(reference_run,
                                                 one_process_run, tmp_path):
  one_dir, one_state = one_process_run
  launch(2, 4, cli_args(reference_run, tmp_path, "--stop_after=2"))
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  launch(2, 4, cli_args(reference_run, tmp_path))  # Resumes at step 2.
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  np.testing.assert_allclose(losses(tmp_path), losses(one_dir), rtol=1e-5)
  params, step = train.restore_params(str(tmp_path))
  assert step == STEPS
  params_close(params, one_state.params, rtol=1e-4, atol=1e-4)
