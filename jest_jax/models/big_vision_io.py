"""big_vision SigLIP two-tower checkpoints (`.npz`) as jest_jax params.

big_vision saves a checkpoint as an `.npz` of flattened arrays whose keys are
the parameter paths joined by '/', under `params/` ("params/img/Transformer/
encoderblock_0/MlpBlock_0/Dense_0/kernel", "params/txt/Embed_0/embedding",
"params/t", "params/b"). jest_jax's two-tower uses the same module names, so
loading is: strip the prefix, unflatten, un-stack scanned layers, and check
every name and shape against the model built from the config.

Scanned layers: a model trained with `scan=True` stores one
`.../encoderblock/...` entry with a leading depth axis instead of
`encoderblock_0 ... encoderblock_{depth-1}`; both are read, into a model
built with or without `scan`.
"""

import re

import jax
import numpy as np

_SCANNED = re.compile(r"^(.*/)encoderblock/(.*)$")


class CheckpointError(ValueError):
  """The checkpoint does not fit the model; the message names the key."""


def flatten(params, prefix="params"):
  """A params tree -> `{"prefix/a/b/c": array}` (big_vision's naming)."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [prefix] + [str(getattr(k, "key", k)) for k in path]
    flat["/".join(names)] = np.asarray(leaf)
  return flat


def _unscan(flat):
  """`.../encoderblock/x` of shape `[depth, ...]` -> `.../encoderblock_i/x`."""
  out = {}
  for key, value in flat.items():
    match = _SCANNED.match(key)
    if not match:
      out[key] = value
      continue
    for layer in range(value.shape[0]):
      out[f"{match.group(1)}encoderblock_{layer}/{match.group(2)}"] = (
          value[layer])
  return out


def _rescan(stored, wanted_shapes):
  """Stacks `.../encoderblock_i/x` into the `.../encoderblock/x` `[depth,
  ...]` entries a scanned model wants (entries already there are kept)."""
  out = dict(stored)
  for key, shape in wanted_shapes.items():
    match = _SCANNED.match(key)
    if not match or key in out or not shape:
      continue
    layers = [f"{match.group(1)}encoderblock_{i}/{match.group(2)}"
              for i in range(shape[0])]
    if all(layer in out for layer in layers):
      out[key] = np.stack([out.pop(layer) for layer in layers])
  return out


def load_npz(path, abstract_params, prefix="params"):
  """Reads a big_vision `.npz` into the structure of `abstract_params`.

  Args:
    path: the `.npz` file (any path `np.load` opens).
    abstract_params: the model's params tree (arrays or ShapeDtypeStructs,
      e.g. `jax.eval_shape(model.init, ...)["params"]`): the names, shapes
      and dtypes wanted.
    prefix: the checkpoint's top-level key ("params" in big_vision).
  Returns:
    The params tree of NumPy arrays, cast to `abstract_params`' dtypes.
  Raises:
    CheckpointError: a parameter missing from the checkpoint, a shape that
      differs, or checkpoint parameters the model does not have.
  """
  with np.load(path, allow_pickle=False) as npz:
    stored = {key: npz[key] for key in npz.files
              if key.startswith(prefix + "/")}
  if not stored:
    raise CheckpointError(f"{path}: no '{prefix}/...' arrays; is it a "
                          "big_vision checkpoint?")
  stored = _unscan(stored)
  wanted = flatten(jax.tree.map(lambda x: np.zeros((), x.dtype),
                                abstract_params), prefix)
  shapes = {key: leaf.shape for key, leaf in zip(
      wanted, jax.tree.leaves(abstract_params))}
  stored = _rescan(stored, shapes)
  missing = sorted(set(wanted) - set(stored))
  if missing:
    raise CheckpointError(f"{path}: no {missing[0]} (and {len(missing) - 1} "
                          "more); the checkpoint is another model variant "
                          "than config.model")
  extra = sorted(set(stored) - set(wanted))
  if extra:
    raise CheckpointError(f"{path}: {extra[0]} (and {len(extra) - 1} more) "
                          "is not in the model; the checkpoint is another "
                          "model variant than config.model")
  for key, shape in shapes.items():
    if stored[key].shape != tuple(shape):
      raise CheckpointError(f"{path}: {key} has shape {stored[key].shape}, "
                            f"the model wants {tuple(shape)}")
  leaves = [stored[key].astype(wanted[key].dtype) for key in wanted]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)
