"""FlexiViT resizing against NumPy twins and jax.image.resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax.models import flexi


def jax_resize_patch(patch, size):
  """Bilinear resize of `[p, p, ...]` to `[size, size, ...]`, no antialias."""
  return np.asarray(jax.image.resize(
      jnp.asarray(patch), (size, size, *patch.shape[2:]), "bilinear",
      antialias=False), np.float64)


def resize_matrix_from_jax(old_size, new_size):
  """`R`, `[q*q, p*p]`, column k = jax's resize of the k-th basis patch."""
  columns = []
  for k in range(old_size * old_size):
    basis = np.zeros(old_size * old_size, np.float32)
    basis[k] = 1.0
    columns.append(jax_resize_patch(basis.reshape(old_size, old_size),
                                    new_size).reshape(-1))
  return np.stack(columns, axis=1)


def numpy_bilinear_weights(in_size, out_size, antialias):
  """`[out, in]` triangle-filter weights, one output sample at a time."""
  scale = max(in_size / out_size, 1.0) if antialias else 1.0
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    centre = (i + 0.5) * in_size / out_size - 0.5
    for j in range(in_size):
      weights[i, j] = max(0.0, 1.0 - abs(centre - j) / scale)
    weights[i] /= weights[i].sum()  # Clamps at the edges.
  return weights


@pytest.mark.parametrize("in_size,out_size", [(4, 8), (8, 16), (3, 7), (8, 4),
                                              (6, 4), (5, 5)])
def test_bilinear_resize_matrix_matches_jax_image_resize(in_size, out_size):
  signal = np.random.default_rng(0).normal(size=in_size).astype(np.float32)
  expected = jax.image.resize(signal, (out_size,), "bilinear", antialias=False)
  got = flexi.bilinear_resize_matrix(in_size, out_size) @ signal
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("old_size,new_size", [(4, 8), (8, 16), (2, 5),
                                               (3, 7), (8, 12)])
def test_pi_resize_upsampling_keeps_token_of_upsampled_patch(old_size,
                                                             new_size):
  rng = np.random.default_rng(old_size * 100 + new_size)
  kernel = rng.normal(size=(old_size, old_size, 3, 5)).astype(np.float32)
  patches = rng.normal(size=(6, old_size, old_size, 3)).astype(np.float32)
  new_kernel = np.asarray(flexi.resize_patch_kernel(jnp.asarray(kernel),
                                                    new_size), np.float64)
  assert new_kernel.shape == (new_size, new_size, 3, 5)
  for patch in patches:
    token = np.einsum("hwc,hwco->o", patch.astype(np.float64), kernel)
    upsampled = jax_resize_patch(patch, new_size)
    token_resized = np.einsum("hwc,hwco->o", upsampled, new_kernel)
    np.testing.assert_allclose(token_resized, token, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("old_size,new_size", [(8, 4), (16, 8), (7, 3),
                                               (6, 4)])
def test_pi_resize_downsampling_is_least_squares_solution(old_size, new_size):
  rng = np.random.default_rng(old_size * 100 + new_size)
  kernel = rng.normal(size=(old_size, old_size, 2, 3))
  resize_t = resize_matrix_from_jax(old_size, new_size).T  # [p*p, q*q]
  expected, *_ = np.linalg.lstsq(
      resize_t, kernel.reshape(old_size * old_size, -1), rcond=None)
  got = flexi.resize_patch_kernel(jnp.asarray(kernel, jnp.float32), new_size)
  np.testing.assert_allclose(
      np.asarray(got).reshape(new_size * new_size, -1), expected,
      rtol=1e-4, atol=1e-4)


def test_pi_resize_is_identity_at_same_size():
  kernel = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4, 3, 2)))
  assert flexi.resize_patch_kernel(kernel, 4) is kernel


def test_pi_resize_jits_and_its_gradient_is_the_transposed_map():
  old_size, new_size = 4, 8
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(old_size, old_size, 3, 2)).astype(np.float32)
  cotangent = rng.normal(size=(new_size, new_size, 3, 2)).astype(np.float32)

  def project(w):
    return jnp.sum(flexi.resize_patch_kernel(w, new_size) * cotangent)

  grad = jax.jit(jax.grad(project))(jnp.asarray(kernel))
  pi_matrix = np.linalg.pinv(resize_matrix_from_jax(old_size, new_size).T)
  expected = pi_matrix.T @ cotangent.reshape(new_size * new_size, -1)
  np.testing.assert_allclose(
      np.asarray(grad).reshape(old_size * old_size, -1), expected,
      rtol=1e-4, atol=1e-4)


def test_resize_posemb_is_identity_when_grid_unchanged():
  posemb = jnp.asarray(np.random.default_rng(0).normal(size=(1, 12, 4)))
  assert flexi.resize_posemb(posemb, (3, 4), old_grid=(3, 4)) is posemb
  square = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 4)))
  assert flexi.resize_posemb(square, (4, 4)) is square


@pytest.mark.parametrize("old_grid,new_grid,antialias", [
    ((4, 4), (8, 8), True),
    ((4, 4), (6, 7), False),
    ((4, 4), (2, 2), False),
    ((4, 4), (2, 2), True),
    ((2, 3), (5, 2), True),
])
def test_resize_posemb_matches_numpy_bilinear(old_grid, new_grid, antialias):
  width = 5
  posemb = np.random.default_rng(0).normal(
      size=(1, old_grid[0] * old_grid[1], width)).astype(np.float32)
  rows = numpy_bilinear_weights(old_grid[0], new_grid[0], antialias)
  cols = numpy_bilinear_weights(old_grid[1], new_grid[1], antialias)
  grid = posemb.reshape(*old_grid, width).astype(np.float64)
  expected = np.einsum("ih,jw,hwd->ijd", rows, cols, grid)
  got = flexi.resize_posemb(jnp.asarray(posemb), new_grid, old_grid=old_grid,
                            antialias=antialias)
  assert got.shape == (1, new_grid[0] * new_grid[1], width)
  np.testing.assert_allclose(
      np.asarray(got).reshape(*new_grid, width), expected, rtol=1e-5,
      atol=1e-5)


def test_resize_posemb_rejects_wrong_grid():
  posemb = jnp.zeros((1, 12, 4))
  with pytest.raises(ValueError, match="not a 4x4 grid"):
    flexi.resize_posemb(posemb, (2, 2), old_grid=(4, 4))
