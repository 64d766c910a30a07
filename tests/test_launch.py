"""launch/pipeline.sh: the three CLI commands, in order, with the overrides."""

import os
import shlex
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(*args):
  result = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "pipeline.sh"), "--dry-run",
       "--python", "py", *args], capture_output=True, text=True, check=True)
  return [shlex.split(line) for line in result.stdout.strip().splitlines()]


def test_dry_run_prints_reference_cache_and_learner_commands():
  ref, cache, learner = dry_run("runs/x", "method=iid,steps=7", "--",
                                "--config.batch_size=32")
  assert ref == ["py", "-m", "jest_jax.main", "--config",
                 "configs/reference.py", "--config.batch_size=32",
                 "--workdir", "runs/x/reference"]
  assert cache == ["py", "-m", "jest_jax.cache_reference", "--workdir",
                   "runs/x/reference"]
  assert learner[:5] == ["py", "-m", "jest_jax.main", "--config",
                         "configs/jest.py:method=iid,steps=7"]
  assert ("--config.reference.cache_dir=runs/x/reference/embeddings/train"
          in learner)
  assert learner[-3:] == ["--config.batch_size=32", "--workdir",
                          "runs/x/learner"]


def test_missing_workdir_is_a_one_line_error():
  result = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "pipeline.sh"), "--dry-run"],
      capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: WORKDIR is required")
