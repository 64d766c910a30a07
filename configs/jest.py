"""Learner runs on the built-in corpus: IID baseline, JEST and its ablations.

  python -m jest_jax.main --config configs/jest.py:method=jest,filter_ratio=0.8 \
      --config.reference.cache_dir=runs/demo/reference/embeddings/train \
      --workdir runs/jest

`method`:
  iid             uniform sampling, every drawn example is trained on.
  jest            joint sampling, learnability scoring (the paper's JEST).
  independent     top-k on per-example learnability (RHO-LOSS style).
  easy_reference  joint sampling on the reference loss alone.
  hard_learner    joint sampling on the learner loss alone (no reference).
  clip_score      CLIP-score filtering: the top b of each super-batch by the
                  reference's own pair score, independently (the cheap
                  baseline: no learner forward pass on the super-batch).
  flexi_jest      JEST scored at patch 16 (4 tokens: cheap) and trained half
                  at patch 8, half at 16 (see configs/flexi_jest.py for the
                  patch-4/8 comparison).
"""

from jest_jax import config_lib

_SELECTION = {
    "iid": dict(kind="uniform"),
    "jest": dict(kind="joint", scoring="learnability"),
    "independent": dict(kind="independent_topk", scoring="learnability"),
    "easy_reference": dict(kind="joint", scoring="easy_reference"),
    "hard_learner": dict(kind="joint", scoring="hard_learner"),
    "clip_score": dict(kind="independent_topk", scoring="easy_reference"),
    "flexi_jest": dict(kind="joint", scoring="learnability"),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="jest", filter_ratio=0.8, steps=1500,
                             seed=0)
  if arg.method not in _SELECTION:
    raise config_lib.ConfigError(
        f"config argument method={arg.method!r}: use one of {sorted(_SELECTION)}")
  config = config_lib.base_config()
  config.method = arg.method
  config.seed = arg.seed
  config.total_steps = arg.steps
  config.selection.update(_SELECTION[arg.method])
  config.selection.filter_ratio = 0.0 if arg.method == "iid" else arg.filter_ratio
  if arg.method == "flexi_jest":
    config.patch.large = 16
    config.patch.score = "large"
    config.patch.large_fraction = 0.5
  return config
