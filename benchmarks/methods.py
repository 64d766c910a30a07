"""Selection methods and the score gain on the built-in corpus, several seeds.

  python benchmarks/methods.py --reference_dir runs/demo/reference \
      --methods iid,jest,independent,easy_reference,hard_learner \
      --gains 10 --seeds 0,1 --steps 1500

Every run uses configs/jest.py with the same optimiser and steps; JEST-style
runs read the reference cache of --reference_dir (built if missing). Prints
mean ± spread over seeds and writes benchmarks/results/methods.json (or
--name). Runs are resumable, so an interrupted sweep continues.
"""

import itertools
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

from jest_jax import cache_reference
from jest_jax import config_lib
from jest_jax import metrics as metrics_lib
from jest_jax import train

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_methods", "Run dir.")
_REFERENCE_DIR = flags.DEFINE_string("reference_dir", None,
                                     "A finished reference run.")
_METHODS = flags.DEFINE_list("methods", ["iid", "jest"], "configs/jest.py methods.")
_GAINS = flags.DEFINE_list("gains", ["10"], "Score gains to sweep.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Learner seeds.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Learner steps.")
_NAME = flags.DEFINE_string("name", "methods", "Output file stem.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__),
                                               "results"), "Output directory.")

KEYS = ("eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1",
        "train/corrupt_fraction")


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  if not _REFERENCE_DIR.value:
    sys.exit("error: --reference_dir (a finished reference run) is required")
  cache_dir, _ = cache_reference.build_cache(_REFERENCE_DIR.value, "train")
  rows = []
  for method, gain, seed in itertools.product(_METHODS.value, _GAINS.value,
                                              _SEEDS.value):
    if method == "iid" and gain != _GAINS.value[0]:
      continue  # IID ignores the gain.
    config = config_lib.load_config("jest", f"method={method},steps={_STEPS.value},"
                              f"seed={seed}")
    config.selection.gain = float(gain)
    config.eval_every = config.checkpoint_every = 500
    config.reference.cache_dir = cache_dir
    name = f"{method}_gain{gain}_seed{seed}"
    summary, _ = train.train_and_evaluate(config,
                                          os.path.join(_WORKDIR.value, name))
    rows.append(dict(method=method, gain=float(gain), seed=int(seed),
                     **{k: summary.get(k) for k in KEYS},
                     wall_seconds=summary["wall_seconds"]))

  table = ["| method | gain | seeds | zero-shot top-1 | i2t R@1 | t2i R@1 | "
           "corrupt share trained |", "|" + "---|" * 7]
  groups = {}
  for row in rows:
    groups.setdefault((row["method"], row["gain"]), []).append(row)
  for (method, gain), group in groups.items():
    cells = []
    for key in KEYS:
      values = np.array([r[key] for r in group], float)
      cells.append(f"{values.mean():.3f} ± {values.std():.3f}"
                   if len(values) > 1 else f"{values.mean():.3f}")
    gain_text = "–" if method == "iid" else f"{gain:g}"
    table.append(f"| {method} | {gain_text} | {len(group)} | "
                 + " | ".join(cells) + " |")
  command = "python " + " ".join(sys.argv)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, f"{_NAME.value}.json"), "w") as f:
    json.dump(dict(command=command, steps=_STEPS.value, rows=rows,
                   table=table), f, indent=2)
  print(f"command: {command}\n")
  print("\n".join(table))


if __name__ == "__main__":
  app.run(main)
