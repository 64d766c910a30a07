"""Device mesh, the shardings of the train step, and host <-> device moves.

One mesh axis, `data`: batches are split along it, parameters and optimiser
state are replicated. The super-batch, the selected sub-batch and the
reference embeddings all shard on their leading (example) axis.

Several processes (multi-host: a TPU pod, or CPU processes with gloo
collectives) share one global mesh whose devices are ordered by process, so
process p owns the p-th contiguous block of every batch: each process loads
only that block (`input_pipeline.TrainInput`) and `put_process_local_batch`
assembles the global array from the blocks.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices=-1):
  """A 1-D `data` mesh over the first `num_devices` devices (-1: all).

  Devices are ordered by process, then id. With several processes the mesh
  must span every device (each process feeds its own devices).
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
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def data_sharding(mesh):
  """Leading axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def put_batch(batch, mesh):
  """Host arrays (a pytree), the same whole batch in every process -> device
  arrays sharded on the leading axis."""
  return jax.device_put(batch, data_sharding(mesh))


def put_process_local_batch(batch, mesh):
  """This process's block of a global batch (a pytree of host arrays
  `[n / P, ...]`, P processes) -> global arrays `[n, ...]` sharded on the
  leading axis; block p becomes rows `[p * n / P, (p + 1) * n / P)`."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(array):
  """A device array -> NumPy, gathering the shards of other processes."""
  if array.is_fully_addressable:
    return np.asarray(array)
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
