"""Command line entry point for one run (reference or learner).

  python -m jest_jax.main --config configs/jest.py:method=jest,filter_ratio=0.8 \
      --config.total_steps=1500 --workdir runs/jest

Re-running with the same workdir resumes from its latest checkpoint.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/jest.py:method=jest.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and summaries.")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    sys.exit("error: both --config and --workdir are required")
  metrics_lib.quiet_library_logs()
  try:
    summary, _ = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, train.TrainingError,
          reference_cache.CacheError, input_pipeline.DataError) as e:
    sys.exit(f"error: {e}")
  logging.info("done: %s", summary)
  print(json.dumps(summary, sort_keys=True))


def run():
  """Parses flags with one-line errors for bad config files or values."""
  try:
    app.run(main)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
