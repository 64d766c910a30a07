"""Command line entry point for one run (reference or learner).

  python -m jest_jax.main --config configs/jest.py:method=jest,filter_ratio=0.8 \
      --config.total_steps=1500 --workdir runs/jest

Re-running with the same workdir resumes from its latest checkpoint. The
terminal shows a progress line (step, loss, examples/s, ETA) and warnings;
the full log is in `WORKDIR/train.log`, the metrics in `WORKDIR/metrics.jsonl`.

Several processes (multi-host) run the same command, one per host:
  * Cloud TPU VM pod: every worker runs it with `--distributed=on`; JAX finds
    the coordinator and process ids itself (launch/tpu_run.sh does this).
  * Elsewhere (e.g. CPU processes with gloo collectives): pass
    `--coordinator=HOST:PORT --num_processes=N --process_id=I`, or set
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
Each process then loads only its share of every batch; process 0 writes the
metrics and config; checkpoints are written collectively, so the workdir must
be one directory every process sees (a bucket, `gs://...`, on a pod).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax import run_guard
from jest_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/jest.py:method=jest.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and summaries.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after", None, "End after this step with a checkpoint, as a "
    "preemption would (the schedule still runs to config.total_steps).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-process JAX: 'on' calls jax.distributed.initialize() (on a TPU VM "
    "it finds the other workers itself); 'auto' does when a coordinator is "
    "given; 'off' runs one process.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
    "HOST:PORT of process 0's coordinator (env JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None,
    "Number of processes (env JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", (int(os.environ["JAX_PROCESS_ID"])
                   if os.environ.get("JAX_PROCESS_ID") else None),
    "This process's index, 0 .. num_processes - 1 (env JAX_PROCESS_ID).")


def initialize_distributed(mode, coordinator, num_processes, process_id):
  """Joins the processes of a multi-host run (before any other JAX call).

  Returns True when this is one of several processes.
  """
  if mode == "off" or (mode == "auto" and not coordinator):
    return False
  explicit = dict(coordinator_address=coordinator or None,
                  num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**{k: v for k, v in explicit.items()
                                if v is not None})
  logging.info("process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def log_file(workdir):
  """`WORKDIR/train.log` (process 0) or `WORKDIR/train.N.log` (process N)."""
  index = jax.process_index()
  return os.path.join(workdir, "train.log" if index == 0
                      else f"train.{index}.log")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    sys.exit("error: both --config and --workdir are required")
  metrics_lib.quiet_library_logs()
  try:
    initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value,
                           _NUM_PROCESSES.value, _PROCESS_ID.value)
  except (ValueError, RuntimeError) as e:
    sys.exit(f"error: cannot join the other processes: {e}; check "
             "--coordinator, --num_processes and --process_id")
  metrics_lib.cli_logging()
  try:
    summary, _ = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                          stop_after=_STOP_AFTER.value,
                                          log_file=log_file(_WORKDIR.value))
  except (config_lib.ConfigError, train.TrainingError,
          reference_cache.CacheError, input_pipeline.DataError) as e:
    sys.exit(f"error: {e}")
  except run_guard.Preempted as e:  # One line, non-zero exit.
    sys.stderr.write(f"{e}\n")
    sys.exit(e.exit_code)
  logging.info("done: %s", summary)
  print(json.dumps(summary, sort_keys=True))


def _load_config_arg(path_arg):
  """`configs/x.py:ARG` (the --config value) -> its ConfigDict."""
  path, _, arg = path_arg.partition(":")
  return config_lib.load_config(path, arg or None)


def run():
  """Parses flags with one-line errors for bad config files or values."""
  try:
    app.run(main, flags_parser=lambda argv: run_guard.parse_flags(
        argv, config_lib.ConfigError, _load_config_arg))
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
