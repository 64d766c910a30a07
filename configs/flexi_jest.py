"""IID vs JEST vs Flexi-JEST at CPU scale, all with a FlexiViT at patch 4
(64 tokens on the 32px corpus) and a large patch of 8 (16 tokens).

  python -m jest_jax.main --config configs/flexi_jest.py:method=flexi_jest \\
      --config.reference.cache_dir=runs/flexi/reference/embeddings/train \\
      --workdir runs/flexi/flexi_jest

`method`:
  reference   the reference, on the curated split, at patch 4.
  iid         uniform batches at patch 4.
  jest        scores the super-batch at patch 4, trains at patch 4.
  flexi_jest  scores at patch 8; trains `large_fraction` of each selected
              sub-batch at patch 8 and the rest at patch 4 (docs/design.md §3).
Evaluation is at patch 4 (and at patch 8, reported as eval/large/*).
"""

from jest_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="flexi_jest", filter_ratio=0.8,
                             steps=1500, seed=0, large_fraction=0.5,
                             split="random")
  methods = ("reference", "iid", "jest", "flexi_jest")
  if arg.method not in methods:
    raise config_lib.ConfigError(
        f"config argument method={arg.method!r}: use one of {methods}")
  config = config_lib.base_config()
  config.method = arg.method
  config.seed = arg.seed
  config.total_steps = arg.steps
  config.patch.small = 4
  config.patch.large = 8
  config.patch.eval_large = True
  if arg.method == "reference":
    config.data.split = "curated"
  elif arg.method != "iid":
    config.selection.kind = "joint"
    config.selection.scoring = "learnability"
    config.selection.filter_ratio = arg.filter_ratio
  if arg.method == "flexi_jest":
    config.patch.score = "large"
    config.patch.large_fraction = arg.large_fraction
    config.patch.split = arg.split
  return config
