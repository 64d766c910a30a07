"""Host-side image decoding and resizing (PIL), shared by the loader and the
folder converter.

Images reach the model as uint8 `[H, W, 3]`; the value range the model sees
([-1, 1]) is applied on device (`evaluate.preprocess_images`).
"""

import io

import numpy as np
from PIL import Image

CROPS = ("center", "none")
RESIZE_METHODS = {"bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST,
                  "area": Image.Resampling.BOX}

# What PIL raises for bytes that are not a whole, readable image.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError,
                 Image.DecompressionBombError)


class BadImage(ValueError):
  """The bytes are not a decodable image; the message says why."""


def decode(encoded, size, *, crop="center", method="bilinear"):
  """Encoded image (or an array) -> uint8 `[size, size, 3]`.

  Args:
    encoded: JPEG/PNG/... bytes, or a uint8 `[H, W, C]` / `[H, W]` array.
    size: output side (px).
    crop: "center" crops the largest central square first (no distortion);
      "none" resizes the whole image (aspect ratio not kept).
    method: a key of `RESIZE_METHODS`.
  Raises:
    BadImage: undecodable or empty bytes.
  """
  if isinstance(encoded, np.ndarray):
    array = encoded
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or 0 in array.shape:
      raise BadImage(f"image array of dtype {array.dtype} and shape "
                     f"{array.shape} is not uint8 [H, W(, 3)]")
    if array.shape[:2] == (size, size) and array.ndim == 3 and (
        array.shape[-1] == 3):
      return array
    image = Image.fromarray(array)
  else:
    if not encoded:
      raise BadImage("empty image bytes")
    try:
      image = Image.open(io.BytesIO(encoded))
      # JPEG can decode at a reduced scale (>= the requested size) for free.
      image.draft("RGB", (size, size))
      image.load()
    except Image.UnidentifiedImageError:
      raise BadImage("undecodable image (not a format PIL reads)") from None
    except DECODE_ERRORS as e:
      raise BadImage(f"undecodable image ({type(e).__name__}: {e})") from None
  if image.mode != "RGB":
    image = image.convert("RGB")
  width, height = image.size
  if crop == "center" and width != height:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
  if image.size != (size, size):
    image = image.resize((size, size), RESIZE_METHODS[method])
  return np.asarray(image, dtype=np.uint8)

