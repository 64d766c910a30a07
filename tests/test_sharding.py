"""The `data` x `fsdp` mesh and the parameter sharding rules: rules pick
tactics by path, fsdp splits the largest divisible dimension, and an
fsdp-sharded train step computes what the data-only step computes."""

import jax
import numpy as np
from jax.sharding import PartitionSpec

from jest_jax import config_lib
from jest_jax import optim
from jest_jax import sharding
from jest_jax import train

VOCAB, TOKENS, B = 61, 16, 16


def test_rules_first_match_wins_and_fsdp_splits_the_largest_divisible_dim():
  mesh = sharding.make_mesh(8, fsdp=2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  tree = {"img": {"kernel": jax.ShapeDtypeStruct((3, 64, 10), np.float32),
                  "odd": jax.ShapeDtypeStruct((3, 5), np.float32)},
          "txt": {"kernel": jax.ShapeDtypeStruct((64, 32), np.float32)},
          "t": jax.ShapeDtypeStruct((1,), np.float32)}
  rules = [("^txt/", "replicate"), (".*", "fsdp")]
  got = sharding.tree_shardings(tree, mesh, rules)
  assert got["img"]["kernel"].spec == PartitionSpec(None, "fsdp", None)
  assert got["img"]["odd"].spec == PartitionSpec()  # Nothing divides.
  assert got["txt"]["kernel"].spec == PartitionSpec()
  assert got["t"].spec == PartitionSpec()
  # Batches split over every device, fsdp included.
  assert sharding.batch_shards(mesh) == 8
  assert sharding.data_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))


def _one_step(fsdp):
  config = config_lib.load_config("jest", "method=iid")
  config.batch_size = B
  config.mesh.fsdp = fsdp
  model = train.build_model(config, VOCAB)
  optimizer, _ = optim.make_optimizer(config.optim, 10)
  mesh = sharding.make_mesh(8, fsdp=fsdp)
  state = train.init_state(model, optimizer, config, mesh, (32, 32, 3),
                           TOKENS)
  functions = train.StepFunctions(model, optimizer, config, mesh)
  rng = np.random.default_rng(0)
  super_batch = sharding.put_batch(
      {"image": rng.integers(0, 256, (B, 32, 32, 3), dtype=np.uint8),
       "tokens": rng.integers(3, VOCAB, (B, TOKENS), dtype=np.int32),
       "corrupt": np.zeros(B, bool)}, mesh)
  kernel_spec = state.params["img"]["Transformer"]["encoderblock_0"][
      "MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec
  state, metrics = functions.jit_step()(state, super_batch, None,
                                        jax.random.key(3))
  return jax.device_get(state), jax.device_get(metrics), kernel_spec


def test_fsdp_train_step_equals_the_data_only_step():
  data_only, metrics, spec = _one_step(fsdp=1)
  assert spec == PartitionSpec()
  sharded, sharded_metrics, spec = _one_step(fsdp=2)
  assert "fsdp" in spec  # The weights really are split.
  np.testing.assert_allclose(sharded_metrics["train/loss"],
                             metrics["train/loss"], rtol=1e-6)
  # Same math; collectives may sum in another order (float32).
  for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(data_only)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
