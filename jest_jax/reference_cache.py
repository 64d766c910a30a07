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
                 temperature, bias (and how the build went).
A cache directory with a manifest is always complete. Locally, `write` and
`CacheBuilder` assemble it in `CACHE_DIR.partial` and rename it into place.
In an object store (`gs://...`, read and written through `etils.epath`),
which cannot rename a directory, the old manifest is deleted first, the
arrays are written into CACHE_DIR, and the manifest last (each object
appears whole when its upload completes). `load` refuses a cache made from
other data or another checkpoint, a truncated one, and a non-finite one.

Building is resumable and shardable (`CacheBuilder`): the records are cut
into fixed chunks; each chunk's embeddings are written atomically to
`CACHE_DIR.partial/chunks/`, next to `build.json` (what is being built). A
rerun of the same build skips the chunks already there; any number of
processes can each build a disjoint share of the chunks; whoever finds all
chunks present assembles the cache. Locally an `fcntl` lock makes that one
process; an object store has no such lock, so there shards that may finish
together should leave assembling to one of them (`cache_reference` lets JAX
process 0 assemble after a barrier).

CLI (after a reference run):
  python -m jest_jax.cache_reference --workdir runs/reference
"""

import contextlib
import fcntl
import hashlib
import io
import json
import os

from etils import epath
import jax
import ml_dtypes
import numpy as np

from jest_jax.paths import is_local

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
  _check_dtype(dtype)
  if image_emb.shape != text_emb.shape:
    raise CacheError(f"image {image_emb.shape} and text {text_emb.shape} "
                     "embeddings must have the same shape")
  if not (np.all(np.isfinite(image_emb)) and np.all(np.isfinite(text_emb))):
    raise CacheError("the reference produced non-finite embeddings; the "
                     "reference checkpoint is broken, retrain it")
  cache_dir = cache_dir.rstrip("/")
  staging = _staging_dir(cache_dir, cache_dir + ".partial")
  for name, array in (("image", image_emb), ("text", text_emb)):
    with (staging / f"{name}.npy").open("wb") as f:
      np.save(f, array.astype(_DTYPES[dtype]))
  manifest = dict(
      format_version=FORMAT_VERSION, count=int(image_emb.shape[0]),
      dim=int(image_emb.shape[1]), dtype=dtype,
      temperature=float(temperature), bias=float(bias),
      dataset_fingerprint=dataset_fingerprint,
      checkpoint_fingerprint=checkpoint_fingerprint,
      checkpoint_step=int(checkpoint_step), model=model_description)
  _publish(staging, cache_dir, manifest)
  return manifest


def _check_dtype(dtype):
  if dtype not in _DTYPES:
    raise CacheError(f"cache dtype {dtype!r} unsupported; use one of "
                     f"{sorted(_DTYPES)}")


def _staging_dir(cache_dir, local_staging):
  """An empty directory to write the cache's arrays into before `_publish`.

  Locally that is `local_staging` (later renamed into place whole, so an
  older cache stays usable until then); in an object store it is `cache_dir`
  itself, whose older cache is removed, manifest first, so no reader takes
  a mix of old and new files for a cache.
  """
  if is_local(cache_dir):
    staging = epath.Path(local_staging)
  else:
    _remove_cache(cache_dir)
    staging = epath.Path(cache_dir)
  if staging.exists():
    staging.rmtree()
  staging.mkdir(parents=True)
  return staging


def _remove_cache(cache_dir):
  cache_dir = epath.Path(cache_dir)
  if (cache_dir / MANIFEST).exists():
    (cache_dir / MANIFEST).unlink()
  if cache_dir.exists():
    cache_dir.rmtree()


def _publish(staging, cache_dir, manifest):
  """Writes the manifest into the assembled `staging` directory, the last
  file of a cache, and (locally) renames it to `cache_dir`, replacing an
  older cache there."""
  (staging / MANIFEST).write_text(json.dumps(manifest, indent=2,
                                             sort_keys=True))
  if not is_local(cache_dir):
    return  # `staging` is `cache_dir`.
  if os.path.exists(cache_dir):
    _remove_cache(cache_dir)
  os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
  os.replace(staging, cache_dir)


class CacheBuilder:
  """A resumable, shardable build of one cache.

  Args:
    cache_dir: where the finished cache goes.
    count: number of records, N.
    chunk_size: records per chunk (the unit of resumption and sharding).
    identity: JSON-able dict naming what is built (dataset and checkpoint
      fingerprints, dtype, ...). A partial build with another identity is
      discarded, never mixed in.
  """

  def __init__(self, cache_dir, *, count, chunk_size, identity):
    if count <= 0 or chunk_size <= 0:
      raise CacheError(f"nothing to build: count={count}, "
                       f"chunk_size={chunk_size}")
    _check_dtype(identity.get("dtype", "float32"))
    self.cache_dir = cache_dir.rstrip("/")
    self.partial = self.cache_dir + ".partial"
    self.count, self.chunk_size = count, chunk_size
    self.identity = dict(identity, count=count, chunk_size=chunk_size)
    self.chunks = [(start, min(start + chunk_size, count))
                   for start in range(0, count, chunk_size)]
    with self._locked():
      build_file = epath.Path(self.partial) / "build.json"
      try:
        same = json.loads(build_file.read_text()) == self.identity
      except (OSError, ValueError):
        same = False
      if not same:
        if build_file.parent.exists():
          build_file.parent.rmtree()
        (build_file.parent / "chunks").mkdir(parents=True)
        _write_atomically(build_file, json.dumps(self.identity, indent=2,
                                                 sort_keys=True).encode())

  def _locked(self):
    """Exclusive locally. An object store has no lock: there two shards of
    one build starting at once can at worst delete chunks the other wrote
    (a rerun rebuilds them), and two finishing at once may both assemble
    (see the module doc). As locally, two different builds must not run
    at once into one cache directory."""
    if not is_local(self.cache_dir):
      return contextlib.nullcontext()
    return _FileLock(self.cache_dir + ".lock")

  def _chunk_path(self, start, stop):
    return (epath.Path(self.partial) / "chunks"
            / f"{start:012d}-{stop:012d}.npz")

  def shard(self, shard_index=0, num_shards=1):
    """This shard's chunks `[(start, stop), ...]`: every `num_shards`-th."""
    if not 0 <= shard_index < num_shards:
      raise CacheError(f"shard {shard_index} of {num_shards} does not exist")
    return self.chunks[shard_index::num_shards]

  def done(self, start, stop):
    return self._chunk_path(start, stop).exists()

  def missing(self):
    return [chunk for chunk in self.chunks if not self.done(*chunk)]

  def write_chunk(self, start, image_emb, text_emb):
    """Stores the float32 `[stop - start, d]` embeddings of one chunk."""
    stop = min(start + self.chunk_size, self.count)
    if (start, stop) not in self.chunks:
      raise CacheError(f"{start} does not start a chunk of {self.chunk_size}")
    image_emb = np.asarray(image_emb, np.float32)
    text_emb = np.asarray(text_emb, np.float32)
    if image_emb.shape != text_emb.shape or len(image_emb) != stop - start:
      raise CacheError(f"chunk [{start}, {stop}) got image {image_emb.shape} "
                       f"and text {text_emb.shape} embeddings")
    if not (np.all(np.isfinite(image_emb)) and np.all(np.isfinite(text_emb))):
      raise CacheError(f"the reference produced non-finite embeddings for "
                       f"records [{start}, {stop}); the reference checkpoint "
                       "is broken, retrain it")
    chunk = io.BytesIO()
    np.savez(chunk, image=image_emb, text=text_emb)
    _write_atomically(self._chunk_path(start, stop), chunk.getvalue())

  def finish(self, **manifest_fields):
    """Assembles the cache if every chunk is there.

    Args:
      **manifest_fields: temperature, bias, checkpoint_step,
        model_description, and anything else to record.
    Returns:
      The manifest, or None while chunks are missing (other shards).
    """
    with self._locked():
      partial = epath.Path(self.partial)
      if not (partial / "build.json").exists():  # Another shard finished it.
        return read_manifest(self.cache_dir)
      if self.missing():
        return None
      dtype = np.dtype(_DTYPES[self.identity.get("dtype", "float32")])
      with self._chunk_path(*self.chunks[0]).open("rb") as f:
        with np.load(f) as chunk:
          dim = chunk["image"].shape[1]
      staging = _staging_dir(self.cache_dir, partial / "assembled")
      header = {"descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False, "shape": (self.count, dim)}
      # The .npy files are streamed chunk by chunk, in record order: an
      # object store cannot be written in place like a memory map.
      with ((staging / "image.npy").open("wb") as image_file,
            (staging / "text.npy").open("wb") as text_file):
        files = {"image": image_file, "text": text_file}
        for f in files.values():
          np.lib.format.write_array_header_1_0(f, header)
        for start, stop in self.chunks:
          with self._chunk_path(start, stop).open("rb") as f:
            with np.load(f) as chunk:
              for name, out in files.items():
                if chunk[name].shape != (stop - start, dim):
                  raise CacheError(
                      f"chunk [{start}, {stop}) holds {name} embeddings of "
                      f"shape {chunk[name].shape}, expected "
                      f"{(stop - start, dim)}; delete {self.partial} and "
                      "rebuild")
                out.write(np.ascontiguousarray(
                    chunk[name].astype(dtype)).tobytes())
      manifest = dict(
          format_version=FORMAT_VERSION, count=self.count, dim=int(dim),
          dtype=self.identity.get("dtype", "float32"), chunks=len(self.chunks),
          dataset_fingerprint=self.identity["dataset_fingerprint"],
          checkpoint_fingerprint=self.identity["checkpoint_fingerprint"])
      manifest.update(manifest_fields)
      manifest["temperature"] = float(manifest["temperature"])
      manifest["bias"] = float(manifest["bias"])
      manifest["checkpoint_step"] = int(manifest["checkpoint_step"])
      _publish(staging, self.cache_dir, manifest)
      # build.json goes first: without it a late shard reads the manifest
      # instead of assembling again from chunks being deleted.
      (partial / "build.json").unlink()
      partial.rmtree()
      return manifest


class _FileLock:
  """An exclusive `fcntl` lock on a file, for a `with` block."""

  def __init__(self, path):
    self.path = path

  def __enter__(self):
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._file = open(self.path, "a")
    fcntl.flock(self._file, fcntl.LOCK_EX)

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def _write_atomically(path, data):
  """Writes the bytes `data` to a temporary file and renames it to `path`,
  so `path` is never seen half-written (in an object store the temporary
  object is copied to `path`, which is as whole)."""
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  tmp.write_bytes(data)
  tmp.replace(path)


def read_manifest(cache_dir):
  path = epath.Path(cache_dir) / MANIFEST
  if not path.exists():
    raise CacheError(f"no reference cache at {cache_dir} ({MANIFEST} missing); "
                     "build it with `python -m jest_jax.cache_reference "
                     "--workdir REFERENCE_WORKDIR`")
  return json.loads(path.read_text())


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
    path = epath.Path(cache_dir) / f"{name}.npy"
    try:
      array = _load_npy(path)
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


def _load_npy(path):
  """The array in the .npy file `path`: memory-mapped locally (read once,
  converted to float32 by the caller), read whole from an object store."""
  if is_local(path):
    return np.load(path, mmap_mode="r")
  with path.open("rb") as f:
    return np.load(f)
