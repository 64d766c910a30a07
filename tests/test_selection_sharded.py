"""Sharded selection on 8 simulated CPU devices (conftest sets XLA_FLAGS).

global scope must equal the single-device selection for the same key; local
scope must equal one single-device call per shard with fold_in(key, shard).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jest_jax import selection
from test_selection import make_models

SIZE = 128     # Super-batch B: 16 rows per shard.
SUB = 32       # Sub-batch b: 4 per shard.


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8
  return Mesh(np.array(jax.devices()), ("data",))


@pytest.fixture(scope="module")
def models(mesh):
  rows = NamedSharding(mesh, PartitionSpec("data"))
  return tuple(emb._replace(image=jax.device_put(emb.image, rows),
                            text=jax.device_put(emb.text, rows))
               for emb in make_models(30, size=SIZE, dim=8))


@pytest.mark.parametrize("method, loss, refine_sweeps", [
    ("joint", "sigmoid", 0),
    ("joint", "softmax", 0),
    ("joint", "sigmoid", 1),
    ("independent_topk", "sigmoid", 0),
    ("independent_sample", "softmax", 0),
    ("uniform", "sigmoid", 0),
])
def test_global_scope_equals_the_single_device_selection(
    mesh, models, method, loss, refine_sweeps):
  key = jax.random.key(1)
  kwargs = dict(sub_batch_size=SUB, method=method, n_chunks=4, gain=2.0,
                loss=loss, refine_sweeps=refine_sweeps)
  got = selection.sharded_select(key, *models, mesh=mesh, scope="global",
                                 **kwargs)
  want = selection.select(key, *models, **kwargs)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert got.sharding.spec == PartitionSpec("data")


def test_local_scope_equals_one_single_device_call_per_shard(mesh, models):
  key = jax.random.key(2)
  got = np.asarray(selection.sharded_select(
      key, *models, mesh=mesh, scope="local", sub_batch_size=SUB, n_chunks=2))
  per_shard, rows = SUB // 8, SIZE // 8
  for shard in range(8):
    own = lambda emb: emb._replace(
        image=emb.image[shard * rows:(shard + 1) * rows],
        text=emb.text[shard * rows:(shard + 1) * rows])
    want = selection.joint_select(
        jax.random.fold_in(key, shard), *map(own, models),
        sub_batch_size=per_shard, n_chunks=2)
    np.testing.assert_array_equal(
        got[shard * per_shard:(shard + 1) * per_shard],
        np.asarray(want) + shard * rows)


def test_sharded_select_inside_jit_equals_the_single_device_selection(
    mesh, models):
  key = jax.random.key(3)

  @jax.jit
  def step(key, learner, reference):
    return selection.sharded_select(key, learner, reference, mesh=mesh,
                                    sub_batch_size=SUB, n_chunks=4)

  np.testing.assert_array_equal(
      np.asarray(step(key, *models)),
      np.asarray(selection.joint_select(key, *models, sub_batch_size=SUB,
                                        n_chunks=4)))


@pytest.mark.parametrize("scope", ["global", "local"])
def test_gather_selected_moves_chosen_rows_to_balanced_shards(
    mesh, models, scope):
  indices = selection.sharded_select(jax.random.key(4), *models, mesh=mesh,
                                     scope=scope, sub_batch_size=SUB,
                                     n_chunks=2)
  super_batch = {"tokens": jnp.arange(SIZE * 3, dtype=jnp.int32).reshape(
      SIZE, 3), "clean": jnp.arange(SIZE) % 3 == 0,
                 "image": models[0].image}
  moved = selection.gather_selected(super_batch, indices, mesh=mesh,
                                    scope=scope)
  for name, rows in moved.items():
    np.testing.assert_array_equal(
        np.asarray(rows), np.asarray(super_batch[name])[np.asarray(indices)])
    assert rows.dtype == super_batch[name].dtype
    assert rows.sharding.spec == PartitionSpec("data")
    assert {s.data.shape[0] for s in rows.addressable_shards} == {SUB // 8}


def test_sub_batch_not_divisible_by_shards_names_the_mesh_axis(mesh, models):
  with pytest.raises(ValueError,
                     match="divisible by the 8 shards of mesh axis"):
    selection.sharded_select(jax.random.key(0), *models, mesh=mesh,
                             sub_batch_size=36, n_chunks=4)


def test_local_scope_checks_chunks_against_the_per_shard_sub_batch(
    mesh, models):
  with pytest.raises(ValueError, match="sub_batch_size=4 is not divisible by "
                     "n_chunks=8"):
    selection.sharded_select(jax.random.key(0), *models, mesh=mesh,
                             scope="local", sub_batch_size=SUB, n_chunks=8)
