"""big_vision `.npz` checkpoints (flattened '/'-joined names) -> params."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax.models import big_vision_io
from jest_jax.models import two_tower


def tiny_model(out_dim=16):
  return two_tower.Model(
      image=dict(variant="pico/8", image_size=16, pool_type="map"),
      text=dict(variant="pico", depth=2, pool_type="last", vocab_size=50),
      out_dim=out_dim)


def init(model, seed=0):
  return model.init(jax.random.key(seed), jnp.zeros((2, 16, 16, 3)),
                    jnp.zeros((2, 8), jnp.int32))["params"]


def write_big_vision_npz(path, params, scanned=False):
  """What big_vision writes: '/'-joined names under params/ (plus optimiser
  state, which the loader ignores); scanned models stack the layers."""
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    flat["params/" + "/".join(k.key for k in keys)] = np.asarray(leaf)
  if scanned:
    stacked = {}
    for key in sorted(flat):
      match = re.match(r"^(.*/)encoderblock_(\d+)/(.*)$", key)
      if match:
        name = f"{match.group(1)}encoderblock/{match.group(3)}"
        stacked.setdefault(name, {})[int(match.group(2))] = flat.pop(key)
    for name, layers in stacked.items():
      flat[name] = np.stack([layers[i] for i in range(len(layers))])
  flat["opt/count"] = np.zeros((), np.int32)
  np.savez(path, **flat)


def embeddings(model, params):
  images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), minval=-1)
  tokens = jax.random.randint(jax.random.key(2), (3, 8), 1, 50)
  zimg, ztxt, out = model.apply({"params": params}, images, tokens)
  return np.asarray(zimg), np.asarray(ztxt), float(out["t"]), float(out["b"])


@pytest.mark.parametrize("scanned", [False, True])
def test_loaded_params_give_the_saved_models_embeddings(tmp_path, scanned):
  model = tiny_model()
  saved = init(model, seed=3)
  path = str(tmp_path / "siglip.npz")
  write_big_vision_npz(path, saved, scanned=scanned)
  abstract = jax.eval_shape(lambda: init(model, seed=0))
  loaded = big_vision_io.load_npz(path, abstract)
  for want, got in zip(embeddings(model, saved), embeddings(model, loaded)):
    np.testing.assert_array_equal(want, got)


def test_other_embedding_size_is_refused_naming_the_key(tmp_path):
  path = str(tmp_path / "other.npz")
  write_big_vision_npz(path, init(tiny_model(out_dim=32)))
  with pytest.raises(big_vision_io.CheckpointError, match=(
      r"params/img/head/bias has shape \(32,\), the model wants \(16,\)")):
    big_vision_io.load_npz(path, jax.eval_shape(lambda: init(tiny_model())))


def test_missing_parameter_is_refused_naming_it(tmp_path):
  params = init(tiny_model())
  path = str(tmp_path / "partial.npz")
  flat = big_vision_io.flatten(params)
  del flat["params/txt/Embed_0/embedding"]
  np.savez(path, **flat)
  with pytest.raises(big_vision_io.CheckpointError,
                     match="no params/txt/Embed_0/embedding"):
    big_vision_io.load_npz(path, jax.eval_shape(lambda: init(tiny_model())))


@pytest.mark.parametrize("scanned_checkpoint", [False, True])
def test_a_scanned_model_loads_both_layouts_and_gives_the_same_embeddings(
    tmp_path, scanned_checkpoint):
  model = tiny_model()
  scanned_model = two_tower.Model(
      image=dict(variant="pico/8", image_size=16, pool_type="map", scan=True),
      text=dict(variant="pico", depth=2, pool_type="last", vocab_size=50,
                scan=True), out_dim=16)
  saved = init(model, seed=3)
  path = str(tmp_path / "siglip.npz")
  write_big_vision_npz(path, saved, scanned=scanned_checkpoint)
  abstract = jax.eval_shape(lambda: init(scanned_model, seed=0))
  assert abstract["txt"]["Encoder_0"]["encoderblock"]["LayerNorm_0"][
      "scale"].shape == (2, 64)
  loaded = big_vision_io.load_npz(path, abstract)
  for want, got in zip(embeddings(model, saved),
                       embeddings(scanned_model, loaded)):
    np.testing.assert_allclose(want, got, atol=1e-5)
