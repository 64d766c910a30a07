"""Device mesh, the shardings of the train step, and host <-> device moves.

Two mesh axes, `data` x `fsdp` (`fsdp` of size 1 unless
`config.mesh.fsdp` says otherwise). Batches are split along both (every
device holds its own rows): the super-batch, the selected sub-batch and the
reference embeddings all shard on their leading (example) axis. Parameters
and optimiser state follow `config.sharding_rules`, a list of
`(regex, tactic)` pairs matched against each leaf's path ("img/Transformer/
encoderblock_0/MlpBlock_0/Dense_0/kernel", optimiser leaves carry their
parameter's path): "replicate", or "fsdp" (the largest dimension the `fsdp`
axis divides is split along it; XLA gathers each weight where it is used
and reduce-scatters its gradient). The first matching rule wins; unmatched
leaves are replicated. docs/design.md §8.

Several processes (multi-host: a TPU pod, or CPU processes with gloo
collectives) share one global mesh whose devices are ordered by process, so
process p owns the p-th contiguous block of every batch: each process loads
only that block (`input_pipeline.TrainInput`) and `put_process_local_batch`
assembles the global array from the blocks.
"""

import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
_BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
TACTICS = ("replicate", "fsdp")


def make_mesh(num_devices=-1, fsdp=1):
  """A `data` x `fsdp` mesh over the first `num_devices` devices (-1: all),
  `fsdp` devices along the second axis.

  Devices are ordered by process, then id; the `fsdp` groups are runs of
  consecutive devices (on a pod, the fastest links). With several processes
  the mesh must span every device (each process feeds its own devices).
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if num_devices == -1:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"config.mesh.num_devices={num_devices}: this host has "
                     f"{len(devices)} devices")
  if jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError(f"config.mesh.num_devices={num_devices}: with "
                     f"{jax.process_count()} processes the mesh spans all "
                     f"{len(devices)} devices; use -1")
  if fsdp < 1 or num_devices % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp}: must be a positive divisor "
                     f"of the {num_devices} devices")
  grid = np.asarray(devices[:num_devices]).reshape(num_devices // fsdp, fsdp)
  return Mesh(grid, _BATCH_AXES)


def batch_spec(mesh):
  """The PartitionSpec of a batch: leading axis over every batch axis of
  `mesh` (`data`, and `fsdp` when the mesh has it)."""
  axes = tuple(a for a in _BATCH_AXES if a in mesh.axis_names)
  return PartitionSpec(axes if len(axes) > 1 else axes[0])


def batch_shards(mesh):
  """How many blocks a batch is split into (every device holds one)."""
  return int(np.prod([mesh.shape[a] for a in _BATCH_AXES
                      if a in mesh.axis_names]))


def data_sharding(mesh):
  """Leading axis split over the batch axes, the rest replicated."""
  return NamedSharding(mesh, batch_spec(mesh))


def replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def _path_name(path):
  return "/".join(str(getattr(k, "key", getattr(k, "name",
                                                 getattr(k, "idx", k))))
                  for k in path)


def _fsdp_spec(shape, size):
  """Splits the largest dimension `size` divides over `fsdp` (none: None)."""
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % size == 0 and shape[dim] >= size:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return PartitionSpec(*spec)
  return None


def tree_shardings(tree, mesh, rules):
  """NamedShardings for a pytree of arrays or ShapeDtypeStructs by `rules`
  (`[(regex, tactic), ...]`, see the module docstring)."""
  compiled = [(re.compile(pattern), tactic) for pattern, tactic in rules]
  for pattern, tactic in rules:
    if tactic not in TACTICS:
      raise ValueError(f"sharding rule ({pattern!r}, {tactic!r}): tactic "
                       f"must be one of {TACTICS}")
  size = mesh.shape.get(FSDP_AXIS, 1)

  def leaf_sharding(path, leaf):
    name = _path_name(path)
    tactic = next((t for p, t in compiled if p.search(name)), "replicate")
    spec = None
    if tactic == "fsdp" and size > 1:
      spec = _fsdp_spec(tuple(leaf.shape), size)
    return NamedSharding(mesh, spec or PartitionSpec())

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def put_batch(batch, mesh):
  """Host arrays (a pytree), the same whole batch in every process -> device
  arrays sharded on the leading axis."""
  return jax.device_put(batch, data_sharding(mesh))


def put_process_local_batch(batch, mesh):
  """This process's block of a global batch (a pytree of host arrays
  `[n / P, ...]`, P processes) -> global arrays `[n, ...]` sharded on the
  leading axis; block p becomes rows `[p * n / P, (p + 1) * n / P)`."""
  # One call for the whole tree: a third less host time than leaf by leaf.
  return jax.make_array_from_process_local_data(data_sharding(mesh), batch)


def to_host(array):
  """A device array -> NumPy, gathering the shards of other processes."""
  if array.is_fully_addressable:
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
