"""FLOPs of a train step from XLA's cost analysis, beside the paper's cost
model (docs/design.md §5).

`measure_flops` reports per-phase FLOPs (`flops/score`, `flops/select`,
`flops/update`), the FLOPs an IID step at the small patch would cost
(`flops/iid_step`), the measured approximation factor A
(`flops/approx_factor`) and the cost model's ratio at that A
(`flops/paper_ratio`).
"""

import jax
import ml_collections

from jest_jax import config_lib
from jest_jax import selection


def cost_flops(program):
  """FLOPs of a lowered or compiled program (`jax.stages.Lowered` or
  `Compiled`) from XLA's cost analysis."""
  cost = program.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0]
  return float(cost["flops"])


def program_flops(fn, *args):
  """FLOPs of `fn(*args)`, unoptimised program (args may be abstract)."""
  return cost_flops(jax.jit(fn).lower(*args))


def paper_flops_ratio(config, approx_factor):
  """docs/design.md §5's cost of a step relative to an IID step (same b).

  IID 3F per example; JEST F(2 + B/b) (the scoring forward reused);
  Flexi-JEST 3F(1 - l + l A) + A F B/b with l the large-patch fraction;
  reference-only scoring (scores from the cache) costs what training does.
  """
  patch = config.patch
  large = patch.large_fraction
  train_cost = 3.0 * (1.0 - large + large * approx_factor)
  if not config_lib.needs_learner_scores(config):
    return train_cost / 3.0
  ratio = config_lib.super_batch_size(config) / config.batch_size
  if patch.score == "small" and not large:
    return (2.0 + ratio) / 3.0
  score_cost = approx_factor if patch.score == "large" else 1.0
  return (train_cost + score_cost * ratio) / 3.0


def measure_flops(functions, state, super_batch, reference, key):
  """Per-phase FLOPs of one step of `functions` (a `train.StepFunctions`)
  from XLA's cost analysis of each phase, plus what an IID step at the small
  patch would cost and the measured approximation factor A (large-patch over
  small-patch forward FLOPs). Arguments may be abstract."""
  b = functions.sub_batch_size
  sub_batch = jax.tree.map(lambda x: _rows(x, b), super_batch)
  out = {}
  out["flops/update"] = program_flops(functions.update, state, sub_batch, key)
  out["flops/iid_step"] = out["flops/update"]
  if functions.config.patch.large_fraction:
    iid_config = ml_collections.ConfigDict(functions.config.to_dict())
    iid_config.patch.large_fraction = 0.0
    iid = type(functions)(functions.model, functions.optimizer, iid_config,
                          functions.mesh)
    out["flops/iid_step"] = program_flops(iid.update, state, sub_batch, key)
  approx_factor = 1.0
  if functions.large_patch:
    forward = lambda patch: program_flops(
        lambda p, x: functions.embed(p, x["image"], x["tokens"], patch),
        state.params, sub_batch)
    approx_factor = (forward(functions.large_patch)
                     / forward(functions.small_patch))
  out["flops/approx_factor"] = approx_factor
  if functions.selecting:
    learner = None  # Reference-only scoring runs no learner pass.
    if config_lib.needs_learner_scores(functions.config):
      out["flops/score"] = program_flops(functions.score, state.params,
                                         super_batch)
      learner = jax.eval_shape(functions.score, state.params, super_batch)
    ref = functions.as_float32(reference)
    out["flops/select"] = program_flops(functions.select, key, learner, ref)
  out["flops/paper_ratio"] = paper_flops_ratio(functions.config,
                                               approx_factor)
  return out


def _rows(x, n):
  """The first `n` rows of an array or of an abstract array, abstract (with
  its sharding): the cost analysis needs only shapes, and slicing a global
  array would run an eager gather (seconds a leaf over several processes)."""
  return jax.ShapeDtypeStruct((n, *x.shape[1:]), x.dtype,
                              sharding=getattr(x, "sharding", None))
