"""FlexiViT image tower with big_vision parameter names.

Parameter tree (so big_vision ViT / FlexiViT / SigLIP image checkpoints map
one to one):

  embedding/{kernel [p, p, 3, width], bias}     p = base_patch_size
  pos_embedding [1, gh * gw, width]             grid = image_size // p
  cls [1, 1, width]                             pool_type "tok" only
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0,
                                LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}
                                (scan=True: one encoderblock/..., each leaf
                                with a leading depth axis)
  Transformer/encoder_norm
  MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}
                                                pool_type "map" only
  head/{kernel, bias}                           when num_classes is set

The tower runs at any patch size that divides the image (docs/design.md §3,
Flexi-JEST): the stored kernel is PI-resized and the learned position
embedding bilinearly resized to the new grid, inside the traced function, so
both stay trainable.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jest_jax.models import flexi
from jest_jax.models import variants

Dtype = Any


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense -> GELU -> Dense."""
  mlp_dim: Optional[int] = None  # None: 4x the input width.
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    """`[n, l, d]` -> `[n, l, d]`."""
    dense = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6),
                 dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim or 4 * width, **dense)(x)
    x = nn.gelu(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(width, **dense)(x)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    """`[n, l, d]` -> `[n, l, d]`."""
    norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(**norm)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        kernel_init=nn.initializers.xavier_uniform(),
        deterministic=deterministic,
        dtype=self.dtype, param_dtype=self.param_dtype)(y, y)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = x + y
    y = nn.LayerNorm(**norm)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                 dtype=self.dtype, param_dtype=self.param_dtype)(
                     y, deterministic)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    return x + y


class _ScannedBlock(Encoder1DBlock):
  """`Encoder1DBlock` as an `nn.scan` body: returns (carry, no output)."""

  def __call__(self, x, deterministic=True):
    return super().__call__(x, deterministic), None


class Encoder(nn.Module):
  """`depth` blocks named `encoderblock_{i}`, then `encoder_norm`.

  `remat`: recompute each block's activations in the backward pass instead
  of keeping them (activation memory of one block instead of `depth`, for
  about one more forward pass of compute). `scan`: one block `nn.scan`ned
  `depth` times, its parameters stacked under `encoderblock` with a leading
  depth axis (big_vision's scanned layout, which `big_vision_io` reads);
  compiles once per block rather than per layer. Both compute the same
  function as the plain loop.
  """
  depth: int
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  scan: bool = False

  @nn.compact
  def __call__(self, x, deterministic=True):
    """`[n, l, d]` -> (normed `[n, l, d]`, last block's output `[n, l, d]`)."""
    block_args = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                      dropout=self.dropout, dtype=self.dtype,
                      param_dtype=self.param_dtype)
    block = _ScannedBlock if self.scan else Encoder1DBlock
    if self.remat:
      # Argument 2 (after self and x) is `deterministic`, a Python bool.
      block = nn.remat(block, prevent_cse=not self.scan, static_argnums=(2,))
    if self.scan:
      x, _ = nn.scan(
          block, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=nn.broadcast, length=self.depth)(
              name="encoderblock", **block_args)(x, deterministic)
    else:
      for layer in range(self.depth):
        x = block(name=f"encoderblock_{layer}", **block_args)(x, deterministic)
    normed = nn.LayerNorm(name="encoder_norm", dtype=self.dtype,
                          param_dtype=self.param_dtype)(x)
    return normed, x


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned query attends to all tokens."""
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """`[n, l, d]` -> `[n, d]`."""
    n, _, width = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(),
                       (1, 1, width), self.param_dtype)
    probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        kernel_init=nn.initializers.xavier_uniform(),
        dtype=self.dtype, param_dtype=self.param_dtype)(probe, x)
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype)(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype,
                     param_dtype=self.param_dtype)(y)
    return x[:, 0]


def posemb_sincos_2d(grid_h, grid_w, width, temperature=10_000.0):
  """Fixed 2-D sin-cos position embedding (MoCo v3), `[1, h * w, width]`."""
  if width % 4:
    raise ValueError(f"sincos2d posemb needs width % 4 == 0, got {width}")
  y, x = np.mgrid[:grid_h, :grid_w]
  omega = np.arange(width // 4) / max(width // 4 - 1, 1)
  omega = 1.0 / temperature**omega
  y = np.einsum("m,d->md", y.reshape(-1), omega)
  x = np.einsum("m,d->md", x.reshape(-1), omega)
  posemb = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)
  return jnp.asarray(posemb, jnp.float32)[None]


class PatchEmbedding(nn.Module):
  """Patchify conv whose kernel is stored at one size and run at any size."""
  width: int
  base_patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, patch_size):
    """`[n, H, W, c]` -> `[n, H / patch_size, W / patch_size, width]`."""
    channels = images.shape[-1]
    kernel = self.param(
        "kernel", nn.initializers.lecun_normal(),
        (self.base_patch_size, self.base_patch_size, channels, self.width),
        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.width,),
                      self.param_dtype)
    # Resize in the parameter dtype, then cast once: a bf16 matmul over the
    # p*p taps would add rounding error to every token.
    kernel = flexi.resize_patch_kernel(kernel, patch_size).astype(self.dtype)
    tokens = _patch_conv(images.astype(self.dtype), kernel, patch_size)
    return tokens + bias.astype(self.dtype)


def _patch_conv(images, kernel, patch_size):
  """Non-overlapping patch conv (stride = kernel size), NHWC / HWIO."""
  return jax.lax.conv_general_dilated(
      images, kernel, window_strides=(patch_size, patch_size),
      padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _Model(nn.Module):
  """FlexiViT; see the module docstring for the parameter tree."""
  num_classes: Optional[int] = None
  image_size: int = 224
  base_patch_size: int = 16
  width: int = 768
  depth: int = 12
  mlp_dim: Optional[int] = None  # None: 4x width.
  num_heads: int = 12
  posemb: str = "learn"  # or "sincos2d"
  pool_type: str = "gap"  # or "map", "tok"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32  # Activations and matmuls.
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # See `Encoder`.
  scan: bool = False

  @nn.compact
  def __call__(self, images, *, patch_size=None, train=False):
    """Embeds images at a chosen patch size.

    Args:
      images: float `[n, H, W, c]`; H and W divisible by the patch size.
      patch_size: static int, the FlexiViT patch size in pixels; None means
        `base_patch_size`.
      train: enables dropout (needs a "dropout" rng when dropout > 0).

    Returns:
      (`[n, num_classes]` logits, or `[n, width]` pooled features when
      num_classes is None; aux dict of intermediates: "stem", "encoded",
      "pre_logits", "logits").

    Raises:
      ValueError: patch size that does not divide the image, bad pool_type.
    """
    out = {}
    patch_size = self.base_patch_size if patch_size is None else patch_size
    _, height, width_px, _ = images.shape
    if (not isinstance(patch_size, (int, np.integer)) or patch_size <= 0
        or height % patch_size or width_px % patch_size):
      raise ValueError(
          f"patch_size {patch_size!r} does not divide the {height}x{width_px} "
          "images; use a positive integer patch size that divides both "
          "sides (the stored kernel is resized to it)")
    if self.image_size % self.base_patch_size:
      raise ValueError(
          f"base_patch_size {self.base_patch_size} does not divide "
          f"image_size {self.image_size}")

    x = out["stem"] = PatchEmbedding(
        self.width, self.base_patch_size, dtype=self.dtype,
        param_dtype=self.param_dtype, name="embedding")(images, patch_size)
    n, grid_h, grid_w, width = x.shape
    x = jnp.reshape(x, [n, grid_h * grid_w, width])

    if self.posemb == "learn":
      stored_side = self.image_size // self.base_patch_size
      posemb = self.param(
          "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(width)),
          (1, stored_side * stored_side, width), self.param_dtype)
      posemb = flexi.resize_posemb(posemb, (grid_h, grid_w),
                                   old_grid=(stored_side, stored_side))
    elif self.posemb == "sincos2d":
      posemb = posemb_sincos_2d(grid_h, grid_w, width)
    else:
      raise ValueError(f"unknown posemb {self.posemb!r}; use 'learn' or "
                       "'sincos2d'")
    x = x + posemb.astype(self.dtype)

    if self.pool_type == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width),
                       self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], 1)

    x = nn.Dropout(rate=self.dropout)(x, not train)
    x, _ = Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype,
        remat=self.remat, scan=self.scan,
        name="Transformer")(x, deterministic=not train)
    out["encoded"] = x

    if self.pool_type == "gap":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "map":
      x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  dtype=self.dtype, param_dtype=self.param_dtype)(x)
    elif self.pool_type == "tok":
      x = x[:, 0]
    else:
      raise ValueError(f"unknown pool_type {self.pool_type!r}; use 'gap', "
                       "'map' or 'tok'")
    out["pre_logits"] = x

    if self.num_classes:
      # Default (non-zero) init: the two-tower model L2-normalises this
      # output, and the norm's gradient at 0 is NaN.
      x = out["logits"] = nn.Dense(
          self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
          name="head")(x)
    return x, out


def Model(num_classes=None, *, variant=None, **kwargs):  # pylint: disable=invalid-name
  """Builds a FlexiViT from a variant name ("B/16") plus overrides.

  The variant's "/<patch>" sets `base_patch_size`; explicit keyword arguments
  win over the variant.
  """
  sizes = variants.decode_variant(variant)
  if "patch_size" in sizes:
    sizes["base_patch_size"] = sizes.pop("patch_size")
  return _Model(num_classes, **{**sizes, **kwargs})
