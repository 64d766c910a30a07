"""Transformer sizes by name, as big_vision's `decode_variant`.

A variant is a size name with an optional patch size: "B", "B/16", "pico/8".
The big_vision names follow Table 2 of arXiv 2106.04560 (plus So400m from
arXiv 2305.13035); "pico" and "nano" are CPU sizes for this project's
built-in demo (width 64, patch 8 on 32px images).
"""

# name: (width, depth, mlp_dim, num_heads)
VARIANTS = {
    # Tiny CPU sizes (ours). pico/8 on 32px images + a depth-1 pico text
    # tower is the ~176k-parameter demo model.
    "pico": (64, 2, 256, 2),
    "nano": (128, 4, 512, 4),
    # big_vision's sizes.
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}


def decode_variant(variant):
  """Sizes for a variant name such as "B/16".

  Args:
    variant: "<size>" or "<size>/<patch>", size a key of `VARIANTS`; None
      means "no variant" and gives {}.

  Returns:
    dict with `width`, `depth`, `mlp_dim`, `num_heads`, and `patch_size`
    (int, pixels) when the name has a "/<patch>" part.

  Raises:
    ValueError: unknown size name or a patch that is not a positive integer.
  """
  if variant is None:
    return {}
  size, _, patch = variant.partition("/")
  if size not in VARIANTS:
    raise ValueError(
        f"unknown model variant {variant!r}; sizes are {sorted(VARIANTS)}, "
        "optionally with '/<patch size>', e.g. 'B/16'")
  width, depth, mlp_dim, num_heads = VARIANTS[size]
  sizes = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  if patch:
    if not patch.isdigit() or int(patch) <= 0:
      raise ValueError(
          f"bad patch size in model variant {variant!r}: want a positive "
          "integer after '/', e.g. 'B/16'")
    sizes["patch_size"] = int(patch)
  return sizes
