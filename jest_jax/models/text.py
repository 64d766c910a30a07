"""Text transformer tower with big_vision parameter names (SigLIP's).

Parameter tree:

  Embed_0/embedding [vocab_size, width]
  pos_embedding [1, max_len, width]            max_len = the init tokens' L
  Encoder_0/encoderblock_{i}/...               as the ViT's blocks (scan=True:
                                               encoderblock/..., stacked)
  Encoder_0/encoder_norm
  MAPHead_0/...                                pool_type "map" only
  head/{kernel, bias}                          when num_classes is set

Attention is bidirectional and unmasked, as SigLIP: tokens are padded to a
fixed length and with pool_type "last" the tokenizer is expected to end every
sequence with a "sticky" EOS (padding with EOS), so the last position sums
up the caption.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jest_jax.models import variants
from jest_jax.models import vit

Dtype = Any


class _Model(nn.Module):
  """Text transformer; see the module docstring for the parameter tree."""
  num_classes: Optional[int] = None
  width: int = 512
  depth: int = 12
  mlp_dim: Optional[int] = None  # None: 4x width.
  num_heads: int = 8
  vocab_size: int = 32_000
  pool_type: str = "last"  # or "first", "gap", "map"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # See `vit.Encoder`.
  scan: bool = False

  @nn.compact
  def __call__(self, tokens, *, train=False):
    """Embeds token sequences.

    Args:
      tokens: int32 `[n, L]` token ids in [0, vocab_size); L must equal the
        length used at init (the position embedding is `[1, L, width]`).
      train: enables dropout (needs a "dropout" rng when dropout > 0).

    Returns:
      (`[n, num_classes]` logits, or `[n, width]` when num_classes is None;
      aux dict: "embedded", "encoded", "pre_logits", "logits").
    """
    out = {}
    x = out["embedded"] = nn.Embed(
        num_embeddings=self.vocab_size, features=self.width,
        dtype=self.dtype, param_dtype=self.param_dtype)(tokens)
    _, length, width = x.shape
    posemb = self.param(
        "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(width)),
        (1, length, width), self.param_dtype)
    x = x + posemb.astype(self.dtype)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    x, _ = vit.Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, dtype=self.dtype,
        param_dtype=self.param_dtype, remat=self.remat,
        scan=self.scan)(x, deterministic=not train)
    out["encoded"] = x

    if self.pool_type == "last":
      x = x[:, -1]
    elif self.pool_type == "first":
      x = x[:, 0]
    elif self.pool_type == "gap":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "map":
      x = vit.MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                      dtype=self.dtype, param_dtype=self.param_dtype)(x)
    else:
      raise ValueError(f"unknown pool_type {self.pool_type!r}; use 'last', "
                       "'first', 'gap' or 'map'")
    out["pre_logits"] = x

    if self.num_classes:
      x = out["logits"] = nn.Dense(
          self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
          name="head")(x)
    return x, out


def Model(num_classes=None, *, variant=None, **kwargs):  # pylint: disable=invalid-name
  """Builds a text tower from a variant name ("B") plus overrides.

  A "/<patch>" part of the variant is ignored (the two towers of a SigLIP
  config often share one variant string).
  """
  sizes = variants.decode_variant(variant)
  sizes.pop("patch_size", None)
  return _Model(num_classes, **{**sizes, **kwargs})
