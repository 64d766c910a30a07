"""The reference model: the same two-tower family, trained on the clean
curated split with uniform sampling. Its embeddings are cached afterwards:

  python -m jest_jax.main --config configs/reference.py --workdir runs/reference
  python -m jest_jax.cache_reference --workdir runs/reference
"""

from jest_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, steps=1500, seed=0)
  config = config_lib.base_config()
  config.method = "reference"
  config.seed = arg.seed
  config.total_steps = arg.steps
  config.data.split = "curated"
  config.selection.kind = "uniform"
  config.selection.filter_ratio = 0.0
  return config
