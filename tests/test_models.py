"""Image tower, text tower and two-tower model: names, FlexiViT, gradients."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax import losses
from jest_jax.models import text
from jest_jax.models import two_tower
from jest_jax.models import variants
from jest_jax.models import vit

# "mu" (width 32, depth 1) keeps every compilation small.
TINY_IMAGE = dict(variant="mu/4", image_size=16, pool_type="map")
TINY_TEXT = dict(variant="mu", vocab_size=32, pool_type="last")


def flat_shapes(params):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def random_images(n, size, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


def random_tokens(n, length, vocab_size, seed=1):
  return jax.random.randint(jax.random.key(seed), (n, length), 0, vocab_size)


def jit_apply(model):
  """`model.apply`, compiled: far faster than op-by-op for these tests."""
  return jax.jit(model.apply, static_argnames=("patch_size", "method"))


def upsample_each_patch(images, patch, new_patch):
  """Resizes every patch on its own (bilinear, no antialias)."""
  n, height, width, channels = images.shape
  grid_h, grid_w = height // patch, width // patch
  patches = images.reshape(n, grid_h, patch, grid_w, patch, channels)
  patches = patches.transpose(0, 1, 3, 2, 4, 5)
  patches = jax.image.resize(
      patches, (n, grid_h, grid_w, new_patch, new_patch, channels),
      "bilinear", antialias=False)
  patches = patches.transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(n, grid_h * new_patch, grid_w * new_patch, channels)


# ---------------------------------------------------------------- variants


def test_decode_variant_gives_big_vision_sizes_and_patch():
  assert variants.decode_variant("B/16") == dict(
      width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)
  assert variants.decode_variant("So400m/14") == dict(
      width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)
  assert variants.decode_variant("L") == dict(
      width=1024, depth=24, mlp_dim=4096, num_heads=16)


def test_decode_variant_gives_tiny_cpu_sizes():
  assert variants.decode_variant("pico/8") == dict(
      width=64, depth=2, mlp_dim=256, num_heads=2, patch_size=8)
  nano = variants.decode_variant("nano")
  assert nano["width"] % nano["num_heads"] == 0


@pytest.mark.parametrize("bad", ["Q/16", "B/x", "B/0", "b"])
def test_decode_variant_rejects_unknown_names(bad):
  with pytest.raises(ValueError, match="variant"):
    variants.decode_variant(bad)


def test_variant_patch_sets_vit_base_patch_size_and_kwargs_override():
  model = vit.Model(10, variant="S/16", depth=2)
  assert (model.base_patch_size, model.width, model.depth) == (16, 384, 2)


# ---------------------------------------------------------------- image tower


def test_vit_params_follow_big_vision_names_and_shapes():
  model = vit.Model(64, variant="pico/8", image_size=32, pool_type="map")
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  shapes = flat_shapes(params)
  block = "Transformer/encoderblock_1"
  assert shapes["embedding/kernel"] == (8, 8, 3, 64)
  assert shapes["embedding/bias"] == (64,)
  assert shapes["pos_embedding"] == (1, 16, 64)
  assert shapes[f"{block}/LayerNorm_0/scale"] == (64,)
  assert shapes[f"{block}/MultiHeadDotProductAttention_0/query/kernel"] == (
      64, 2, 32)
  assert shapes[f"{block}/MultiHeadDotProductAttention_0/out/kernel"] == (
      2, 32, 64)
  assert shapes[f"{block}/LayerNorm_1/bias"] == (64,)
  assert shapes[f"{block}/MlpBlock_0/Dense_0/kernel"] == (64, 256)
  assert shapes[f"{block}/MlpBlock_0/Dense_1/kernel"] == (256, 64)
  assert shapes["Transformer/encoder_norm/scale"] == (64,)
  assert shapes["MAPHead_0/probe"] == (1, 1, 64)
  assert shapes["MAPHead_0/MlpBlock_0/Dense_0/kernel"] == (64, 256)
  assert shapes["head/kernel"] == (64, 64)
  assert "Transformer/encoderblock_2/LayerNorm_0/scale" not in shapes


def test_vit_stored_params_do_not_depend_on_init_image_size():
  model = vit.Model(8, variant="mu/8", image_size=32)
  small = jax.eval_shape(model.init, jax.random.key(0),
                         jnp.zeros((1, 16, 16, 3)))["params"]
  assert flat_shapes(small)["pos_embedding"] == (1, 16, 32)
  assert flat_shapes(small)["embedding/kernel"] == (8, 8, 3, 32)


@pytest.mark.parametrize("pool_type,extra,absent", [
    ("gap", None, "MAPHead_0/probe"),
    ("tok", "cls", "MAPHead_0/probe"),
])
def test_vit_pool_type_decides_pooling_params(pool_type, extra, absent):
  model = vit.Model(8, variant="mu/4", image_size=16, pool_type=pool_type)
  shapes = flat_shapes(jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
  assert absent not in shapes
  if extra:
    assert shapes[extra] == (1, 1, 32)


def test_vit_at_base_patch_equals_vit_at_explicit_same_patch():
  model = vit.Model(8, **TINY_IMAGE)
  images = random_images(4, 16)
  params = jax.jit(model.init)(jax.random.key(0), images)
  default, _ = jit_apply(model)(params, images)
  explicit, _ = jit_apply(model)(params, images, patch_size=4)
  np.testing.assert_array_equal(default, explicit)


def test_vit_on_upsampled_patches_at_double_patch_matches_base():
  # FlexiViT's point: the PI-resized kernel sees an upsampled patch as the
  # base kernel sees the original, and the token grid (so the posemb) is
  # the same, so the whole tower agrees.
  model = vit.Model(8, **TINY_IMAGE)
  images = random_images(4, 16)
  params = jax.jit(model.init)(jax.random.key(0), images)
  base, base_aux = jit_apply(model)(params, images, patch_size=4)
  upsampled = upsample_each_patch(images, 4, 8)
  flexi_out, flexi_aux = jit_apply(model)(params, upsampled, patch_size=8)
  np.testing.assert_allclose(flexi_aux["stem"], base_aux["stem"], atol=1e-4)
  np.testing.assert_allclose(flexi_out, base, atol=1e-4)


def test_vit_at_larger_patch_gives_fewer_tokens():
  model = vit.Model(8, **TINY_IMAGE)
  images = random_images(2, 16)
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  _, aux = jax.eval_shape(functools.partial(model.apply, patch_size=8),
                          params, images)
  assert aux["stem"].shape == (2, 2, 2, 32)
  assert aux["encoded"].shape == (2, 4, 32)


@pytest.mark.parametrize("patch_size", [5, 0, 32])
def test_vit_rejects_patch_size_that_does_not_divide_image(patch_size):
  model = vit.Model(8, **TINY_IMAGE)
  images = jnp.zeros((1, 16, 16, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  with pytest.raises(ValueError, match="does not divide"):
    jax.eval_shape(functools.partial(model.apply, patch_size=patch_size),
                   params, images)


def test_vit_rejects_unknown_pool_type():
  model = vit.Model(8, variant="mu/4", image_size=16, pool_type="max")
  with pytest.raises(ValueError, match="pool_type"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


# ---------------------------------------------------------------- text tower


def test_text_params_follow_big_vision_names_and_shapes():
  model = text.Model(64, variant="pico", vocab_size=100, depth=1)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((2, 16), jnp.int32))["params"]
  shapes = flat_shapes(params)
  assert shapes["Embed_0/embedding"] == (100, 64)
  assert shapes["pos_embedding"] == (1, 16, 64)
  assert shapes["Encoder_0/encoderblock_0/MlpBlock_0/Dense_1/kernel"] == (
      256, 64)
  assert shapes["Encoder_0/encoder_norm/bias"] == (64,)
  assert shapes["head/kernel"] == (64, 64)
  assert "Encoder_0/encoderblock_1/LayerNorm_0/scale" not in shapes


@pytest.mark.parametrize("pool_type", ["last", "first", "gap", "map"])
def test_text_pool_types_give_one_vector_per_sequence(pool_type):
  model = text.Model(16, variant="mu", vocab_size=32, pool_type=pool_type)
  tokens = jnp.zeros((3, 8), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)
  out, aux = jax.eval_shape(model.apply, params, tokens)
  assert out.shape == (3, 16)
  assert aux["encoded"].shape == (3, 8, 32)


def test_text_last_pool_reads_the_last_position():
  model = text.Model(None, variant="mu", vocab_size=32, pool_type="last")
  tokens = random_tokens(2, 8, 32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)
  out, aux = jit_apply(model)(params, tokens)
  np.testing.assert_array_equal(out, aux["encoded"][:, -1])


# ---------------------------------------------------------------- two towers


@pytest.fixture(scope="module")
def tiny_two_tower():
  model = two_tower.Model(image=TINY_IMAGE, text=TINY_TEXT, out_dim=16)
  images, tokens = random_images(4, 16), random_tokens(4, 8, 32)
  params = jax.jit(model.init)(jax.random.key(0), images, tokens)["params"]
  return model, params, images, tokens


def test_two_tower_params_are_img_txt_t_b(tiny_two_tower):
  _, params, _, _ = tiny_two_tower
  assert set(params) == {"img", "txt", "t", "b"}
  assert params["t"].shape == params["b"].shape == (1,)
  np.testing.assert_allclose(params["t"], np.log(10.0), rtol=1e-6)
  np.testing.assert_allclose(params["b"], -10.0)


def test_two_tower_outputs_unit_norm_and_init_scalars(tiny_two_tower):
  model, params, images, tokens = tiny_two_tower
  zimg, ztxt, out = jit_apply(model)({"params": params}, images, tokens)
  assert zimg.shape == ztxt.shape == (4, 16)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1.0, rtol=1e-5)
  assert out["t"].shape == out["b"].shape == ()
  np.testing.assert_allclose(out["t"], 10.0, rtol=1e-5)
  np.testing.assert_allclose(out["b"], -10.0)
  np.testing.assert_allclose(out["t/parameter"], np.log(10.0), rtol=1e-6)
  assert out["img/pre_logits"].shape == (4, 32)
  assert out["txt/encoded"].shape == (4, 8, 32)


def test_two_tower_skips_a_missing_tower(tiny_two_tower):
  model, params, images, tokens = tiny_two_tower
  zimg, ztxt, out = jax.eval_shape(model.apply, {"params": params}, images,
                                   None)
  assert ztxt is None and zimg.shape == (4, 16)
  assert not any(key.startswith("txt/") for key in out)
  zimg, ztxt, _ = jax.eval_shape(model.apply, {"params": params}, None,
                                 tokens)
  assert zimg is None and ztxt.shape == (4, 16)


def test_two_tower_encode_methods_match_call(tiny_two_tower):
  model, params, images, tokens = tiny_two_tower
  apply = jit_apply(model)
  zimg, ztxt, _ = apply({"params": params}, images, tokens, patch_size=8)
  zimg_alone, _ = apply({"params": params}, images, patch_size=8,
                        method="encode_image")
  ztxt_alone, _ = apply({"params": params}, tokens, method="encode_text")
  np.testing.assert_allclose(zimg_alone, zimg, atol=1e-6)
  np.testing.assert_allclose(ztxt_alone, ztxt, atol=1e-6)


def test_two_tower_separate_out_dims(tiny_two_tower):
  _, _, images, tokens = tiny_two_tower
  model = two_tower.Model(image=TINY_IMAGE, text=TINY_TEXT, out_dim=(12, 20))
  zimg, ztxt, _ = jax.eval_shape(
      functools.partial(model.init_with_output, jax.random.key(0)),
      images, tokens)[0]
  assert zimg.shape == (4, 12) and ztxt.shape == (4, 20)


def test_sigmoid_loss_gradients_finite_and_nonzero_at_two_patch_sizes(
    tiny_two_tower):
  model, params, images, tokens = tiny_two_tower

  @functools.partial(jax.jit, static_argnames="patch_size")
  def loss_grad(params, patch_size):
    def loss_fn(params):
      zimg, ztxt, out = model.apply({"params": params}, images, tokens,
                                    patch_size=patch_size)
      return losses.sigmoid_loss(zimg, ztxt, out["t"], out["b"])
    return jax.value_and_grad(loss_fn)(params)

  for patch_size in (4, 8):
    loss, grads = loss_grad(params, patch_size)
    assert np.isfinite(loss)
    for path, grad in flax.traverse_util.flatten_dict(grads, sep="/").items():
      assert np.all(np.isfinite(grad)), (patch_size, path)
      assert np.any(grad != 0), (patch_size, path)


def test_bfloat16_activations_keep_float32_params_and_close_outputs(
    tiny_two_tower):
  _, params, images, tokens = tiny_two_tower
  model_f32 = two_tower.Model(image=TINY_IMAGE, text=TINY_TEXT, out_dim=16)
  model_bf16 = two_tower.Model(
      image={**TINY_IMAGE, "dtype": jnp.bfloat16},
      text={**TINY_TEXT, "dtype": jnp.bfloat16}, out_dim=16)
  bf16_params = jax.eval_shape(model_bf16.init, jax.random.key(0), images,
                               tokens)["params"]
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree.leaves(bf16_params))
  zimg, ztxt, _ = jit_apply(model_f32)({"params": params}, images, tokens)
  zimg_bf, ztxt_bf, _ = jit_apply(model_bf16)({"params": params}, images,
                                              tokens)
  assert zimg_bf.dtype == jnp.float32
  # Unit vectors of 16 entries; bf16 rounding moves them by ~5e-3.
  assert float(jnp.max(jnp.abs(zimg_bf - zimg))) < 0.02
  assert float(jnp.max(jnp.abs(ztxt_bf - ztxt))) < 0.02


def _stack_layers(params):
  """Unscanned params -> the scanned layout (`encoderblock` with a leading
  depth axis), the obvious way: by name."""
  out = {}
  for key, value in params.items():
    if not isinstance(value, dict):
      out[key] = value
      continue
    blocks = sorted((k for k in value if k.startswith("encoderblock_")),
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    if blocks:
      out[key] = {k: v for k, v in value.items() if k not in blocks}
      out[key]["encoderblock"] = jax.tree.map(
          lambda *layers: jnp.stack(layers), *[value[k] for k in blocks])
    else:
      out[key] = _stack_layers(value)
  return out


@pytest.mark.parametrize("remat, scan", [(True, False), (False, True),
                                         (True, True)])
def test_remat_and_scan_give_the_plain_forward_and_gradients(remat, scan):
  image = {**TINY_IMAGE, "depth": 3}
  text = {**TINY_TEXT, "depth": 2}
  plain = two_tower.Model(image=image, text=text, out_dim=16)
  memory = dict(remat=remat, scan=scan)
  other = two_tower.Model(image={**image, **memory}, text={**text, **memory},
                          out_dim=16)
  images, tokens = random_images(4, 16), random_tokens(4, 8, 32)
  params = plain.init(jax.random.key(0), images, tokens)["params"]
  other_params = _stack_layers(params) if scan else params
  assert (jax.tree.structure(other_params) == jax.tree.structure(
      jax.eval_shape(other.init, jax.random.key(0), images, tokens)["params"]))

  def loss_and_grad(model, params):
    def loss(params):
      zimg, ztxt, out = model.apply({"params": params}, images, tokens)
      return losses.sigmoid_loss(zimg, ztxt, out["t"], out["b"])
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grad(plain, params)
  other_loss, other_grads = loss_and_grad(other, other_params)
  # Same float32 arithmetic, possibly fused or ordered differently by XLA.
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  want = _stack_layers(grads) if scan else grads
  for path, grad in flax.traverse_util.flatten_dict(other_grads,
                                                    sep="/").items():
    np.testing.assert_allclose(
        grad, flax.traverse_util.flatten_dict(want, sep="/")[path],
        rtol=1e-4, atol=1e-6, err_msg=path)
