"""Device mesh and the shardings of the train step.

One mesh axis, `data`: batches are split along it, parameters and optimiser
state are replicated. The super-batch, the selected sub-batch and the
reference embeddings all shard on their leading (example) axis.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices=-1):
  """A 1-D `data` mesh over the first `num_devices` devices (-1: all)."""
  devices = jax.devices()
  if num_devices == -1:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"config.mesh.num_devices={num_devices}: this host has "
                     f"{len(devices)} devices")
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def data_sharding(mesh):
  """Leading axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def put_batch(batch, mesh):
  """Host arrays (a pytree) -> device arrays sharded on the leading axis."""
  return jax.device_put(batch, data_sharding(mesh))
