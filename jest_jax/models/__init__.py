"""Flax Linen models with big_vision parameter names.

`two_tower.Model` (SigLIP-style image–text model) built from a FlexiViT image
tower (`vit`) and a text transformer (`text`); sizes by variant name
(`variants.decode_variant`); FlexiViT resizing in `flexi`.
"""

from jest_jax.models import flexi
from jest_jax.models import text
from jest_jax.models import two_tower
from jest_jax.models import variants
from jest_jax.models import vit
from jest_jax.models.variants import decode_variant
