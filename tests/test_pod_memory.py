"""Pod-scale memory, checked by compiling (not running) the train step on
simulated devices: Flexi-JEST's per-device memory does not grow with the
number of devices, and each device splits its own rows by (seed, step,
shard)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import losses
from jest_jax import optim
from jest_jax import sharding
from jest_jax import step_memory
from jest_jax import train

VOCAB, TOKENS = 61, 16
PER_DEVICE = 16  # Trained rows per device.


def flexi_config(devices, scope="local"):
  config = config_lib.load_config("flexi_jest", "method=flexi_jest,filter_ratio=0.5")
  config.batch_size = PER_DEVICE * devices
  config.selection.n_chunks = 4
  config.selection.scope = scope
  config.reference.cache_dir = "unused-here"
  config.model.image.variant = "pico/4"
  config.data.max_tokens = TOKENS
  return config


def functions_on(devices, config=None):
  config = config or flexi_config(devices)
  model = train.build_model(config, VOCAB)
  optimizer, _ = optim.make_optimizer(config.optim, 10)
  mesh = sharding.make_mesh(devices)
  return train.StepFunctions(model, optimizer, config, mesh)


def test_each_shard_splits_its_own_rows_by_seed_step_and_shard():
  key = jax.random.fold_in(jax.random.key(7), 3)  # seed 7, step 3
  small, large = train.shard_splits(64, 0.5, "random", key, 8)
  assert small.shape == large.shape == (8, 4)
  for shard in range(8):
    want_small, want_large = train.split_for_resolutions(
        8, 0.5, "random", jax.random.fold_in(key, shard))
    np.testing.assert_array_equal(small[shard], want_small)
    np.testing.assert_array_equal(large[shard], want_large)
    assert sorted(np.concatenate([small[shard], large[shard]])) == list(
        range(8))
  assert len({tuple(np.asarray(r)) for r in large}) > 1  # Shards differ.
  # The whole-batch split of one shard is the single-device draw.
  one_small, one_large = train.shard_splits(64, 0.5, "random", key, 1)
  np.testing.assert_array_equal(
      one_large[0], train.split_for_resolutions(64, 0.5, "random", key)[1])


def test_sharded_multires_loss_equals_rows_encoded_at_their_shards_patch():
  functions = functions_on(8)
  b = functions.sub_batch_size
  size = functions.config.data.image_size
  rng = np.random.default_rng(0)
  sub_batch = {"image": rng.integers(0, 256, (b, size, size, 3), np.uint8),
               "tokens": rng.integers(3, VOCAB, (b, TOKENS), np.int32)}
  state = train.init_state(functions.model, functions.optimizer,
                           functions.config, functions.mesh,
                           (size, size, 3), TOKENS)
  key = jax.random.key(5)
  placed = sharding.put_batch(sub_batch, functions.mesh)
  loss, _ = jax.jit(functions.loss)(state.params, placed, key)

  # Twin: all rows at both patches in their original order; row i of shard
  # s is large when the shard's own split says so.
  _, large = train.shard_splits(b, 0.5, "random", key, 8)
  is_large = np.zeros(b, bool)
  for shard, rows in enumerate(np.asarray(large)):
    is_large[shard * (b // 8) + rows] = True
  apply = jax.jit(functions.model.apply, static_argnames="patch_size")
  images = evaluate.preprocess_images(sub_batch["image"])
  at_4, ztxt, out = apply({"params": state.params}, images,
                          sub_batch["tokens"], patch_size=4)
  at_8, _, _ = apply({"params": state.params}, images, None, patch_size=8)
  zimg = jnp.where(is_large[:, None], at_8, at_4)
  np.testing.assert_allclose(
      loss, losses.sigmoid_loss(zimg, ztxt, out["t"], out["b"]), rtol=1e-5)


def test_flexi_jest_step_memory_per_device_flat_from_4_to_8_devices():
  # Same per-device batch; local selection, so only the trainer's own
  # layout decides whether rows of other devices are materialised.
  four = step_memory.step_memory(functions_on(4))
  eight = step_memory.step_memory(functions_on(8))
  assert eight["temp"] == pytest.approx(four["temp"], rel=0.10), (four, eight)
