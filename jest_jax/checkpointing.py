"""Run checkpoints: `WORKDIR/checkpoints/STEP/state`, written with orbax.

One factory, `manager(workdir)`, builds every `CheckpointManager` jest_jax
uses (training, `restore_params`, `write_params_as_run`), each with its own
type-handler registry, so nothing here changes orbax's process-wide handlers.

A checkpoint holds one item, `state`: the trainer's `TrainState`, or
`{"params": ...}` for a run written by `write_params_as_run`. Saving and
restoring is collective: with several processes every process calls it and
the workdir must be one directory all of them see (`gs://...` on a pod).
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jest_jax.errors import TrainingError

_ITEM = "state"


def checkpoint_dir(workdir):
  """`workdir/checkpoints`, absolute; cloud paths (`gs://...`) as given."""
  if "://" not in os.fspath(workdir):
    workdir = os.path.abspath(workdir)
  return os.path.join(os.fspath(workdir), "checkpoints")


def _type_handler_registry():
  """orbax's standard handlers, for this manager only.

  On CPU each replicated array is saved from one replica: orbax's default
  splits the write of a replicated array across its replicas, which pays off
  across accelerator hosts but on CPU compiles one slice program per
  parameter shape (seconds per save for the demo model).
  """
  th = ocp.type_handlers
  scalar = th.ScalarHandler()
  array = th.ArrayHandler(
      use_replica_parallel=jax.default_backend() != "cpu")
  return th.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, th.NumpyHandler()), (jax.Array, array),
      (str, th.StringHandler()))


def manager(workdir, *, max_to_keep=None, read_only=False):
  """The CheckpointManager of `workdir/checkpoints` (created if missing,
  unless `read_only`: then nothing is created, and nothing is deleted by
  `max_to_keep`).

  Saves are synchronous: a checkpoint is complete when `save` returns, so a
  preemption right after it loses nothing.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      enable_async_checkpointing=False)
  handler = ocp.PyTreeCheckpointHandler(
      type_handler_registry=_type_handler_registry())
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=(_ITEM,),
                               item_handlers={_ITEM: handler})


def save(checkpoints, step, tree):
  """Writes `tree` (a pytree of arrays) as checkpoint `step`."""
  checkpoints.save(step, args=ocp.args.Composite(
      **{_ITEM: ocp.args.PyTreeSave(tree)}))


def restore(checkpoints, step, target):
  """Checkpoint `step` shaped like `target`: a pytree of
  `jax.ShapeDtypeStruct`s with shardings (restored onto those devices) or of
  NumPy arrays (restored onto the host)."""
  restored = checkpoints.restore(step, args=ocp.args.Composite(
      **{_ITEM: ocp.args.PyTreeRestore(
          item=target,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target))}))
  return restored[_ITEM]


def abstract(tree):
  """`tree`'s shapes, dtypes and shardings: a target for `restore`."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_config(workdir, config):
  (epath.Path(workdir) / "config.json").write_text(
      config.to_json_best_effort(indent=2, sort_keys=True))


def restore_params(workdir, step=None):
  """Params of a finished run's checkpoint (latest unless `step`), as NumPy,
  with the step they come from: `(params, step)`. Works whatever devices
  and processes saved it or read it (every process gets all of it)."""
  if not epath.Path(checkpoint_dir(workdir)).exists():
    raise TrainingError(f"no checkpoints folder in {workdir}; pass the "
                        "workdir of a trained reference run")
  checkpoints = manager(workdir, read_only=True)
  step = checkpoints.latest_step() if step is None else step
  if step is None:
    raise TrainingError(f"no checkpoint in {workdir}/checkpoints; train the "
                        "reference first (`python -m jest_jax.main --config "
                        "configs/reference.py --workdir ...`)")
  # NumPy targets: restore onto the host, not onto the saving topology.
  host_target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype),
                             checkpoints.item_metadata(step)[_ITEM])
  return restore(checkpoints, step, host_target)["params"], step


def write_params_as_run(workdir, config, params, step=0):
  """Makes `params` a run directory (config.json + a checkpoint holding
  `{"params": ...}` at `step`) that `restore_params` and
  `python -m jest_jax.cache_reference` read: e.g. a big_vision checkpoint
  loaded with `models.big_vision_io.load_npz`, to serve as the reference."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  save_config(workdir, config)
  checkpoints = manager(workdir)
  save(checkpoints, step, {"params": params})
  checkpoints.wait_until_finished()
