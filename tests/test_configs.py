"""Every config file builds and validates; the TPU-scale one is checked for
shapes abstractly (jax.eval_shape), without running it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import train


@pytest.mark.parametrize("name, arg", [
    ("reference", None), ("jest", "method=iid"), ("jest", "method=jest"),
    ("jest", "method=independent"), ("jest", "method=easy_reference"),
    ("jest", "method=hard_learner"), ("jest", "method=flexi_jest"),
    ("flexi_jest", "method=reference"), ("flexi_jest", "method=iid"),
    ("flexi_jest", "method=jest"), ("flexi_jest", "method=flexi_jest"),
])
def test_cpu_configs_validate(name, arg):
  config = config_lib.load_config(name, arg)
  if config_lib.needs_reference(config):
    config.reference.cache_dir = "cache"
  config_lib.validate(config, num_devices=8)


@pytest.mark.parametrize("method", ["iid", "jest", "flexi_jest"])
def test_tpu_config_validates_on_a_256_chip_pod(method):
  config = config_lib.load_config("tpu_flexi_jest", f"method={method}")
  if config_lib.needs_reference(config):
    config.reference.cache_dir = "gs://bucket/cache"
  config_lib.validate(config, num_devices=256)
  assert config.total_steps * config.batch_size <= 3_000_000_000
  if method != "iid":
    assert config_lib.super_batch_size(config) == 163_840
    assert config.batch_size // config.selection.n_chunks == 2048


def test_tpu_model_shapes_build_abstractly():
  config = config_lib.load_config("tpu_flexi_jest", "method=flexi_jest")
  model = train.build_model(config, config.model.vocab_size_hint)
  images = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((2, config.data.max_tokens), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  params = params["params"]
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  assert 190e6 < count < 220e6  # SigLIP B/16: ~86M image + ~110M text.
  assert params["img"]["embedding"]["kernel"].shape == (16, 16, 3, 768)
  assert params["img"]["pos_embedding"].shape == (1, 256, 768)
  for patch, tokens_per_image in ((16, 256), (32, 64)):
    out = jax.eval_shape(
        lambda p, x, patch=patch: model.apply(
            {"params": p}, x, patch_size=patch, method="encode_image"),
        params, images)
    assert out[0].shape == (2, 768)
    assert out[1]["encoded"].shape[1] == tokens_per_image
