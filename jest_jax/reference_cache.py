"""The reference-embedding cache.

The reference model is frozen, so its per-example image and text embeddings
(not scalar scores: which pairs meet in a super-batch is not known in advance)
and its temperature and bias are computed once, aligned with the record
indices of a data split, and read with every super-batch.

Layout of a cache directory:
  image.npy    [N, d] image embeddings (stored dtype in the manifest)
  text.npy     [N, d] text embeddings
  manifest.json  what produced it: dataset fingerprint and size, reference
                 checkpoint fingerprint and step, model description, dtype,
                 temperature, bias.
A cache is written to a temporary directory and renamed into place, so a
directory with a manifest is always complete. `load` refuses a cache made
from other data or another checkpoint, a truncated one, and a non-finite one.

CLI (after a reference run):
  python -m jest_jax.cache_reference --workdir runs/reference
"""

import hashlib
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_DTYPES = {"float32": np.float32, "float16": np.float16,
           "bfloat16": ml_dtypes.bfloat16}


class CacheError(ValueError):
  """The cache cannot be used; the message says why and how to fix it."""


def params_fingerprint(params):
  """A short stable hash of a parameter tree's names, shapes and values."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(str(leaf.dtype).encode() + str(leaf.shape).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


class ReferenceEmbeddings:
  """A loaded cache: `image`, `text` (float32 `[N, d]`), `temperature`,
  `bias` (floats) and the `manifest` dict."""

  def __init__(self, image, text, temperature, bias, manifest):
    self.image, self.text = image, text
    self.temperature, self.bias = temperature, bias
    self.manifest = manifest

  def take(self, indices):
    return self.image[indices], self.text[indices]


def write(cache_dir, image_emb, text_emb, *, temperature, bias,
          dataset_fingerprint, checkpoint_fingerprint, checkpoint_step,
          model_description, dtype="float32"):
  """Writes a complete cache atomically (temporary directory + rename)."""
  if dtype not in _DTYPES:
    raise CacheError(f"cache dtype {dtype!r} unsupported; use one of "
                     f"{sorted(_DTYPES)}")
  if image_emb.shape != text_emb.shape:
    raise CacheError(f"image {image_emb.shape} and text {text_emb.shape} "
                     "embeddings must have the same shape")
  if not (np.all(np.isfinite(image_emb)) and np.all(np.isfinite(text_emb))):
    raise CacheError("the reference produced non-finite embeddings; the "
                     "reference checkpoint is broken, retrain it")
  tmp = cache_dir.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  np.save(os.path.join(tmp, "image.npy"), image_emb.astype(_DTYPES[dtype]))
  np.save(os.path.join(tmp, "text.npy"), text_emb.astype(_DTYPES[dtype]))
  manifest = dict(
      format_version=FORMAT_VERSION, count=int(image_emb.shape[0]),
      dim=int(image_emb.shape[1]), dtype=dtype,
      temperature=float(temperature), bias=float(bias),
      dataset_fingerprint=dataset_fingerprint,
      checkpoint_fingerprint=checkpoint_fingerprint,
      checkpoint_step=int(checkpoint_step), model=model_description)
  with open(os.path.join(tmp, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  if os.path.exists(cache_dir):
    shutil.rmtree(cache_dir)
  os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
  os.replace(tmp, cache_dir)
  return manifest


def read_manifest(cache_dir):
  path = os.path.join(cache_dir, MANIFEST)
  if not os.path.exists(path):
    raise CacheError(f"no reference cache at {cache_dir} ({MANIFEST} missing); "
                     "build it with `python -m jest_jax.cache_reference "
                     "--workdir REFERENCE_WORKDIR`")
  with open(path) as f:
    return json.load(f)


def load(cache_dir, *, dataset_fingerprint, count,
         checkpoint_fingerprint=None):
  """Loads and checks a cache against the data (and checkpoint) in use.

  Args:
    cache_dir: directory written by `write`.
    dataset_fingerprint: fingerprint of the split the run trains on.
    count: number of records in that split.
    checkpoint_fingerprint: if given, the reference checkpoint the cache must
      come from.
  Raises:
    CacheError: a mismatch, a truncated file, or non-finite values.
  """
  manifest = read_manifest(cache_dir)
  fix = "rebuild it with `python -m jest_jax.cache_reference`"
  if manifest.get("format_version") != FORMAT_VERSION:
    raise CacheError(f"reference cache {cache_dir} has format "
                     f"{manifest.get('format_version')}, expected "
                     f"{FORMAT_VERSION}; {fix}")
  if manifest["dataset_fingerprint"] != dataset_fingerprint:
    raise CacheError(
        f"reference cache {cache_dir} was built for dataset "
        f"{manifest['dataset_fingerprint']}, but this run trains on "
        f"{dataset_fingerprint}; {fix} for this data")
  if manifest["count"] != count:
    raise CacheError(f"reference cache {cache_dir} holds {manifest['count']} "
                     f"examples, the data has {count}; {fix}")
  if (checkpoint_fingerprint is not None
      and manifest["checkpoint_fingerprint"] != checkpoint_fingerprint):
    raise CacheError(
        f"reference cache {cache_dir} was built from checkpoint "
        f"{manifest['checkpoint_fingerprint']}, but the reference checkpoint "
        f"is now {checkpoint_fingerprint}; {fix}")
  arrays = []
  for name in ("image", "text"):
    path = os.path.join(cache_dir, f"{name}.npy")
    try:
      array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
      raise CacheError(f"reference cache file {path} is unreadable or "
                       f"truncated ({e}); {fix}") from None
    if array.shape != (manifest["count"], manifest["dim"]):
      raise CacheError(f"reference cache file {path} has shape {array.shape}, "
                       f"manifest says {(manifest['count'], manifest['dim'])}; "
                       f"{fix}")
    # .npy has no bfloat16 type: it reads back as raw 2-byte records.
    array = np.asarray(array).view(_DTYPES[manifest["dtype"]])
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
      raise CacheError(f"reference cache file {path} has non-finite values; "
                       f"{fix}")
    arrays.append(array)
  return ReferenceEmbeddings(arrays[0], arrays[1], manifest["temperature"],
                             manifest["bias"], manifest)
