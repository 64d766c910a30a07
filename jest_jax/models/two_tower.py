"""Two-tower image–text model (SigLIP / CLIP), big_vision parameter names.

Parameter tree: `img/...` (a FlexiViT, `vit.py`), `txt/...` (`text.py`),
`t` `(1,)` the log-temperature (init log 10) and `b` `(1,)` the bias (init
-10), as docs/design.md §1 and big_vision's `two_towers`.

Besides `__call__`, the methods `encode_image` and `encode_text` run one
tower, e.g. to score a super-batch's images at the large patch size:

  zimg, _ = model.apply({"params": params}, images, patch_size=32,
                        method=model.encode_image)
"""

from typing import Any, Optional, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jest_jax.models import text as text_model
from jest_jax.models import vit

ConfigDict = Any


def _normalise(z):
  """L2-normalises rows in float32; returns (normalised, norms `[n, 1]`)."""
  z = z.astype(jnp.float32)
  norm = jnp.linalg.norm(z, axis=1, keepdims=True)
  return z / (norm + 1e-8), norm


class Model(nn.Module):
  """Image tower `img`, text tower `txt`, log-temperature `t`, bias `b`.

  Attributes:
    image: ViT keyword arguments (dict or ConfigDict), e.g.
      {"variant": "pico/8", "image_size": 32, "pool_type": "map"}.
    text: text-tower keyword arguments, e.g.
      {"variant": "pico", "vocab_size": 64, "depth": 1}.
    out_dim: embedding size of both towers, or (image, text) sizes.
    temperature_init: initial exp(t).
    bias_init: initial b.
  """
  image: Optional[ConfigDict] = None
  text: Optional[ConfigDict] = None
  out_dim: Union[int, Tuple[int, int]] = 128
  temperature_init: float = 10.0
  bias_init: float = -10.0

  def setup(self):
    out_dims = self.out_dim
    if isinstance(out_dims, (int, np.integer)):
      out_dims = (out_dims, out_dims)
    self.img = vit.Model(out_dims[0], **(self.image or {}))
    self.txt = text_model.Model(out_dims[1], **(self.text or {}))
    log_temperature = float(np.log(self.temperature_init))
    bias = float(self.bias_init)
    self.t = self.param(
        "t", lambda _, shape, dtype: jnp.full(shape, log_temperature, dtype),
        (1,), jnp.float32)
    self.b = self.param(
        "b", lambda _, shape, dtype: jnp.full(shape, bias, dtype),
        (1,), jnp.float32)

  def encode_image(self, images, *, patch_size=None, train=False):
    """float `[n, H, W, 3]` -> (L2-normalised float32 `[n, d]`, aux dict)."""
    zimg, aux = self.img(images, patch_size=patch_size, train=train)
    zimg, aux["norm"] = _normalise(zimg)
    return zimg, aux

  def encode_text(self, tokens, *, train=False):
    """int32 `[n, L]` -> (L2-normalised float32 `[n, d]`, aux dict)."""
    ztxt, aux = self.txt(tokens, train=train)
    ztxt, aux["norm"] = _normalise(ztxt)
    return ztxt, aux

  def __call__(self, image, text, *, patch_size=None, train=False):
    """Embeds a batch of image–text pairs.

    Args:
      image: float `[n, H, W, 3]`, or None to skip the image tower.
      text: int32 `[m, L]` tokens, or None to skip the text tower.
      patch_size: static int, the image tower's patch size (None: its base).
      train: enables dropout.

    Returns:
      (zimg `[n, d]` or None, ztxt `[m, d]` or None, out), embeddings
      L2-normalised float32; out has "t" (= exp(t), scalar), "b" (scalar),
      "t/parameter" (t, scalar) and each tower's aux under "img/..." and
      "txt/...".
    """
    zimg = ztxt = None
    out = {}
    if image is not None:
      zimg, aux = self.encode_image(image, patch_size=patch_size, train=train)
      out.update({f"img/{k}": v for k, v in aux.items()})
    if text is not None:
      ztxt, aux = self.encode_text(text, train=train)
      out.update({f"txt/{k}": v for k, v in aux.items()})
    out["t/parameter"] = self.t[0]
    out["t"] = jnp.exp(self.t[0])
    out["b"] = self.b[0]
    return zimg, ztxt, out
