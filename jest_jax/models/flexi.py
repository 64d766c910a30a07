"""FlexiViT resizing: one set of weights, any patch size (arXiv 2212.08013).

Patch-embedding kernels are resized with the pseudo-inverse ("PI") resize
(docs/design.md §3, Flexi-JEST): if `R` is the `[q*q, p*p]` matrix of a bilinear resize
of a p×p patch to q×q (no antialiasing, half-pixel centres, as
`jax.image.resize(..., "bilinear", antialias=False)` and TF's
`tf.image.resize`), the resized kernel is

  vec(w_q) = pinv(R^T) @ vec(w_p),   per (input channel, output channel).

For upsampling (q >= p), `R^T` has full row rank, so `R^T vec(w_q) = vec(w_p)`
exactly and `<x, w_p> = <R x, w_q>`: a token computed from a patch equals the
token computed from the upsampled patch. For downsampling it is the
least-squares solution. `R` depends only on the static sizes, so it is built
with NumPy at trace time and cached; the resize itself is one matmul, so
gradients flow to the stored kernel.

Position embeddings are resized bilinearly on their grid.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_resize_matrix(in_size, out_size):
  """1-D bilinear resize as a matrix, `[out_size, in_size]`, float64.

  Half-pixel centres, no antialiasing, edges clamped: output sample `i` reads
  input position `(i + 0.5) * in_size / out_size - 0.5`. Equals
  `jax.image.resize(x, (out_size,), "bilinear", antialias=False)`.
  """
  positions = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  positions = np.clip(positions, 0.0, in_size - 1)
  lower = np.floor(positions).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = positions - lower
  matrix = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), 1.0 - frac)
  np.add.at(matrix, (rows, upper), frac)
  return matrix


@functools.lru_cache(maxsize=64)
def pi_resize_matrix(old_size, new_size):
  """`pinv(R^T)`, `[new_size**2, old_size**2]`, float32, read-only.

  `R = kron(A, A)` is the 2-D bilinear resize of a row-major flattened
  old_size×old_size patch to new_size×new_size, `A` the 1-D resize matrix.
  """
  resize_1d = bilinear_resize_matrix(old_size, new_size)
  resize_2d = np.kron(resize_1d, resize_1d)
  matrix = np.linalg.pinv(resize_2d.T).astype(np.float32)
  matrix.flags.writeable = False  # Shared by the cache.
  return matrix


def resize_patch_kernel(kernel, new_size):
  """PI-resizes a patch-embedding kernel to a new patch size.

  Args:
    kernel: `[p, p, c_in, c_out]` conv kernel (HWIO).
    new_size: int q, the new patch size in pixels (static).

  Returns:
    `[q, q, c_in, c_out]` kernel, same dtype; `kernel` itself when q == p.
  """
  old_h, old_w, c_in, c_out = kernel.shape
  if old_h != old_w:
    raise ValueError(f"square patch kernels only, got shape {kernel.shape}")
  if new_size == old_h:
    return kernel
  matrix = jnp.asarray(pi_resize_matrix(old_h, new_size), kernel.dtype)
  flat = kernel.reshape(old_h * old_w, c_in, c_out)
  # HIGHEST: TPUs otherwise run f32 matmuls in bf16 passes, and this one
  # decides every token of the image tower.
  resized = jnp.einsum("qp,pio->qio", matrix, flat,
                       precision=jax.lax.Precision.HIGHEST)
  return resized.reshape(new_size, new_size, c_in, c_out)


def resize_posemb(posemb, new_grid, *, old_grid=None, antialias=True):
  """Bilinearly resizes a flattened grid of position embeddings.

  Args:
    posemb: `[1, gh * gw, d]`, rows in row-major grid order.
    new_grid: (gh', gw'), the target grid.
    old_grid: (gh, gw), the grid `posemb` is laid out on; None means square.
    antialias: widen the filter when shrinking, as `jax.image.resize`'s
      default and big_vision's FlexiViT (keeps its checkpoints' behaviour).
      No effect when growing.

  Returns:
    `[1, gh' * gw', d]`, same dtype; `posemb` itself when the grid is
    unchanged.
  """
  _, length, width = posemb.shape
  if old_grid is None:
    side = int(round(length ** 0.5))
    old_grid = (side, side)
  old_grid, new_grid = tuple(old_grid), tuple(new_grid)
  if length != old_grid[0] * old_grid[1]:
    raise ValueError(
        f"posemb has {length} rows, not a {old_grid[0]}x{old_grid[1]} grid")
  if new_grid == old_grid:
    return posemb
  grid = posemb.reshape(1, *old_grid, width)
  grid = jax.image.resize(grid, (1, *new_grid, width), "bilinear",
                          antialias=antialias)
  return grid.reshape(1, new_grid[0] * new_grid[1], width)
