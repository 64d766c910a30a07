"""Flexi-JEST in the trainer: multi-resolution sub-batches, low-resolution
scoring through the PI-resized kernel, FLOP accounting, configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import flops
from jest_jax import selection
from jest_jax import losses
from jest_jax import optim
from jest_jax import sharding
from jest_jax import train
from jest_jax.models import flexi

VOCAB, TOKENS, B = 61, 16, 16


def flexi_config(method="flexi_jest", **patch):
  config = config_lib.load_config("flexi_jest", f"method={method},filter_ratio=0.8")
  config.batch_size = B
  config.selection.n_chunks = 4
  config.reference.cache_dir = "unused-here"
  config.patch.update(patch)
  return config


def make_functions(config, image_variant="pico/4"):
  config.model.image.variant = image_variant
  model = train.build_model(config, VOCAB)
  optimizer, _ = optim.make_optimizer(config.optim, 10)
  mesh = sharding.make_mesh(1)
  state = train.init_state(model, optimizer, config, mesh, (32, 32, 3), TOKENS)
  return train.StepFunctions(model, optimizer, config, mesh), state


def batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          "tokens": rng.integers(3, VOCAB, (n, TOKENS), dtype=np.int32),
          "corrupt": np.zeros(n, bool)}


@pytest.mark.parametrize("split", ["random", "interleave"])
def test_multires_loss_equals_loss_of_separately_encoded_rows(split):
  functions, state = make_functions(flexi_config(split=split))
  sub_batch, key = batch(B), jax.random.key(3)
  loss, _ = functions.loss(state.params, sub_batch, key)

  # Twin: every row encoded at both patches in the original order; each row
  # takes the resolution the split gave it.
  small_rows, large_rows = train.split_for_resolutions(B, 0.5, split, key)
  is_large = np.zeros(B, bool)
  is_large[np.asarray(large_rows)] = True
  assert is_large.sum() == B // 2
  model, params = functions.model, {"params": state.params}
  images = evaluate.preprocess_images(sub_batch["image"])
  at_4, ztxt, out = model.apply(params, images, sub_batch["tokens"],
                                patch_size=4)
  at_8, _, _ = model.apply(params, images, None, patch_size=8)
  zimg = jnp.where(is_large[:, None], at_8, at_4)
  expected = losses.sigmoid_loss(zimg, ztxt, out["t"], out["b"])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_interleaved_split_spreads_large_rows_evenly():
  small, large = train.split_for_resolutions(12, 0.25, "interleave", None)
  np.testing.assert_array_equal(np.sort(np.asarray(large)), [3, 7, 11])
  assert sorted(np.concatenate([small, large]).tolist()) == list(range(12))


def test_scoring_at_the_large_patch_uses_the_pi_resized_kernel():
  functions, state = make_functions(flexi_config(), image_variant="pico/4")
  super_batch = batch(8, seed=1)
  scored = functions.score(state.params, super_batch)

  # The same weights stored natively at patch 8: kernel PI-resized 4 -> 8,
  # position embedding bilinearly resized from the 8x8 grid to 4x4.
  native_config = flexi_config()
  native_config.model.image.variant = "pico/8"
  native = train.build_model(native_config, VOCAB)
  params = jax.tree.map(lambda x: x, state.params)
  img = dict(params["img"])
  img["embedding"] = dict(img["embedding"])
  img["embedding"]["kernel"] = flexi.resize_patch_kernel(
      img["embedding"]["kernel"], 8)
  img["pos_embedding"] = flexi.resize_posemb(img["pos_embedding"], (4, 4))
  params["img"] = img
  zimg, ztxt, _ = native.apply(
      {"params": params}, evaluate.preprocess_images(super_batch["image"]),
      super_batch["tokens"])
  np.testing.assert_allclose(scored.image, zimg, atol=2e-5)
  np.testing.assert_allclose(scored.text, ztxt, atol=1e-6)
  at_small, _, _ = functions.model.apply(
      {"params": state.params},
      evaluate.preprocess_images(super_batch["image"]), None, patch_size=4)
  assert not np.allclose(scored.image, at_small, atol=1e-3)


def test_gradients_reach_the_shared_patch_embedding_from_both_halves():
  functions, state = make_functions(flexi_config(split="interleave"))
  sub_batch, key = batch(B), jax.random.key(0)

  def kernel_grad(rows):
    def f(params):
      zimg, _, _ = functions.sub_batch_embeddings(params, sub_batch, key)
      return jnp.sum(zimg[rows] * jnp.arange(1, zimg.shape[1] + 1))
    return jax.grad(f)(state.params)["img"]["embedding"]["kernel"]

  from_small = kernel_grad(slice(0, B // 2))  # Rows encoded at patch 4.
  from_large = kernel_grad(slice(B // 2, B))  # Rows encoded at patch 8.
  for grad in (from_small, from_large):
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  assert not np.allclose(from_small, from_large)


def _step_flops(config):
  functions, state = make_functions(config)
  super_batch = batch(config_lib.super_batch_size(config))
  n = len(super_batch["image"])
  reference = None
  if config_lib.needs_reference(config):
    unit = np.eye(n, 64, dtype=np.float32)
    reference = selection.Embeddings(image=unit, text=unit,
                                     temperature=np.float32(10.0),
                                     bias=np.float32(-10.0))
  key = jax.random.key(0)
  lowered = jax.jit(functions.step).lower(state, super_batch, reference, key)
  measured = flops.measure_flops(functions, state, super_batch, reference, key)
  return flops.cost_flops(lowered), measured


def test_flops_per_step_order_iid_flexi_jest_jest_at_f08():
  iid, _ = _step_flops(flexi_config("iid"))
  jest, jest_parts = _step_flops(flexi_config("jest"))
  flexi_jest, flexi_parts = _step_flops(flexi_config("flexi_jest"))
  assert 0 < iid < flexi_jest < jest
  # Scoring at patch 8 sees a quarter of the tokens: well under half the cost.
  assert flexi_parts["flops/score"] < 0.5 * jest_parts["flops/score"]
  assert 0.1 < flexi_parts["flops/approx_factor"] < 0.5
  # The paper's formulas for JEST (with forward reuse, which we don't do)
  # and Flexi-JEST bracket what is measured.
  assert jest_parts["flops/paper_ratio"] == pytest.approx((2 + 5) / 3)
  assert jest / iid == pytest.approx(jest_parts["flops/paper_ratio"], rel=0.2)
  assert flexi_jest / iid == pytest.approx(flexi_parts["flops/paper_ratio"],
                                           rel=0.1)


def test_flexi_config_validates_patch_sizes():
  config = flexi_config(large=7)
  with pytest.raises(config_lib.ConfigError, match="patch.large=7: must divide"):
    config_lib.validate(config)
  config = flexi_config(large=0)
  with pytest.raises(config_lib.ConfigError, match="patch.large=0"):
    config_lib.validate(config)
  config = flexi_config(large_fraction=1.5)
  with pytest.raises(config_lib.ConfigError, match="large_fraction=1.5"):
    config_lib.validate(config)

