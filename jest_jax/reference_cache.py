"""The reference-embedding cache, stored in shards and read row by row.

The reference model is frozen, so its per-example image and text embeddings
(not scalar scores: which pairs meet in a super-batch is not known in advance)
and its temperature and bias are computed once, aligned with the record
indices of a data split, and read with every super-batch (docs/design.md §4).

Layout of a cache directory (format 2):
  shard-SSSSS-of-NNNNN.npy  `[rows, 2 d + k]` in the stored dtype: row r is
                 record `start + r`: its image embedding (d values), its text
                 embedding (d values) and an 8-byte checksum of both (k
                 values' worth of bytes), so a row and its check are one
                 contiguous read. Each shard holds `shard_rows` records (the
                 last fewer), about `shard_bytes` (a few hundred MB).
  manifest.json  what produced it: dataset fingerprint and size, reference
                 checkpoint fingerprint and step, model description, dtype,
                 temperature, bias, the shards and their sizes.
Nothing is loaded whole: `open_cache` checks the manifest and the shards'
sizes, and `ReferenceCache.read(indices)` reads only the requested rows
(memory-mapped locally; from an object store by byte range, consecutive rows
coalesced into one read) and verifies their checksums, so host memory is
O(rows read), whatever the cache's size. The rows keep the stored dtype
(bfloat16 stays bfloat16) until the device, where the train step upcasts.

The checksum of a row is a weighted sum modulo 2^64 of its 16-bit words
(odd weights, so any change confined to one word changes it) plus a multiple
of the record index (so rows moved between positions are caught). Reading a
row verifies it; a small local cache is verified whole when opened.

A cache directory with a manifest is always complete. Locally, `write` and
`CacheBuilder` assemble it in `CACHE_DIR.partial` and rename it into place.
In an object store (`gs://...`, read and written through `etils.epath`),
which cannot rename a directory, the old manifest is deleted first, the
shards are written into CACHE_DIR, and the manifest last (each object
appears whole when its upload completes). `open_cache` refuses a cache made
from other data or another checkpoint, a truncated one and one of the old
single-file format.

Building is resumable and shardable (`CacheBuilder`): the records are cut
into fixed chunks; each chunk's embeddings are written atomically to
`CACHE_DIR.partial/chunks/`, next to `build.json` (what is being built). A
rerun of the same build skips the chunks already there; any number of
processes can each build a disjoint share of the chunks; whoever finds all
chunks present assembles the cache. Locally a file lock makes that one
process (the lock file exists only while held); an object store has no such
lock, so there shards that may finish together should leave assembling to
one of them (`cache_reference` lets JAX process 0 assemble after a barrier).

CLI (after a reference run):
  python -m jest_jax.cache_reference --workdir runs/reference
"""

import contextlib
import hashlib
import io
import json
import os
import threading
import zipfile

from etils import epath
import jax
import ml_dtypes
import numpy as np

from jest_jax import selection
from jest_jax.data import storage
from jest_jax.paths import is_local

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
DEFAULT_SHARD_BYTES = 256 << 20
# Local caches up to this size are verified whole when opened.
FULL_CHECK_BYTES = 256 << 20
_DTYPES = {"float32": np.float32, "float16": np.float16,
           "bfloat16": ml_dtypes.bfloat16}
_CHECK_BYTES = 8
_INDEX_MIX = np.uint64(0x9E3779B97F4A7C15)  # Odd: index -> distinct offsets.
_REBUILD = "rebuild it with `python -m jest_jax.cache_reference`"


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


# ---------------------------------------------------------------- layout --


class Layout:
  """Where each record's row lives: shard files, row width, byte offsets.

  Args:
    count: records N. dim: embedding width d. dtype: stored dtype name.
    shard_rows: records per shard (the last shard holds the rest).
  """

  def __init__(self, count, dim, dtype, shard_rows):
    _check_dtype(dtype)
    self.count, self.dim, self.dtype_name = int(count), int(dim), dtype
    self.dtype = np.dtype(_DTYPES[dtype])
    self.shard_rows = int(shard_rows)
    self.width = 2 * self.dim + _CHECK_BYTES // self.dtype.itemsize
    self.row_bytes = self.width * self.dtype.itemsize
    self.num_shards = -(-self.count // self.shard_rows)
    # float64 sums of uint16 words times these weights are exact (below
    # 2^53 for any d up to 2^16).
    self._weights = 2 * np.arange(self.dim * self.dtype.itemsize,
                                  dtype=np.float64) + 1

  @classmethod
  def for_shard_bytes(cls, count, dim, dtype, shard_bytes):
    row_bytes = (2 * dim * np.dtype(_DTYPES[dtype]).itemsize + _CHECK_BYTES)
    return cls(count, dim, dtype, max(1, min(count, shard_bytes // row_bytes)))

  def shard_name(self, shard):
    return f"shard-{shard:05d}-of-{self.num_shards:05d}.npy"

  def shard_range(self, shard):
    start = shard * self.shard_rows
    return start, min(start + self.shard_rows, self.count)

  def header(self, shard):
    """The .npy header of `shard`: the file is a plain `np.load`-able
    `[rows, width]` array (bfloat16 reads back as 2-byte void records)."""
    start, stop = self.shard_range(shard)
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {
        "descr": np.lib.format.dtype_to_descr(self.dtype),
        "fortran_order": False, "shape": (stop - start, self.width)})
    return f.getvalue()

  def shard_bytes(self, shard):
    start, stop = self.shard_range(shard)
    return len(self.header(shard)) + (stop - start) * self.row_bytes

  def checksums(self, rows, indices):
    """uint64 `[n]` checksums of rows `[n, width]` (only their first 2 d
    values count) of records `indices`."""
    words = np.ascontiguousarray(rows[:, :2 * self.dim]).view(np.uint16)
    # einsum's own loop: BLAS threads gain nothing on a matrix-vector
    # product and contend with the input pipeline's threads.
    total = np.einsum("ij,j->i", words, self._weights).astype(np.uint64)
    return total + (np.asarray(indices, np.uint64) + np.uint64(1)) * _INDEX_MIX

  def encode(self, image, text, start):
    """Stored rows `[n, width]` of records `start .. start + n - 1`."""
    rows = np.zeros((len(image), self.width), self.dtype)
    rows[:, :self.dim] = image
    rows[:, self.dim:2 * self.dim] = text
    check = self.checksums(rows, np.arange(start, start + len(image)))
    rows[:, 2 * self.dim:] = check.view(self.dtype).reshape(len(image), -1)
    return rows

  def stored_checksums(self, rows):
    return np.ascontiguousarray(rows[:, 2 * self.dim:]).view(np.uint64)[:, 0]


def _check_dtype(dtype):
  if dtype not in _DTYPES:
    raise CacheError(f"cache dtype {dtype!r} unsupported; use one of "
                     f"{sorted(_DTYPES)}")


def _check_embeddings(image_emb, text_emb, what):
  if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
    raise CacheError(f"{what}: image {image_emb.shape} and text "
                     f"{text_emb.shape} embeddings must be the same [n, d]")
  if not (np.all(np.isfinite(image_emb)) and np.all(np.isfinite(text_emb))):
    raise CacheError(f"the reference produced non-finite embeddings for "
                     f"{what}; the reference checkpoint is broken, retrain it")


# ---------------------------------------------------------------- writing --


def write(cache_dir, image_emb, text_emb, *, temperature, bias,
          dataset_fingerprint, checkpoint_fingerprint, checkpoint_step,
          model_description, dtype="float32",
          shard_bytes=DEFAULT_SHARD_BYTES):
  """Writes a complete cache of `[N, d]` embeddings atomically."""
  _check_dtype(dtype)
  image_emb = np.asarray(image_emb, np.float32)
  text_emb = np.asarray(text_emb, np.float32)
  _check_embeddings(image_emb, text_emb, f"records [0, {len(image_emb)})")
  layout = Layout.for_shard_bytes(len(image_emb), image_emb.shape[1], dtype,
                                  shard_bytes)
  cache_dir = cache_dir.rstrip("/")
  staging = _staging_dir(cache_dir, cache_dir + ".partial")
  _write_shards(staging, layout, [(0, image_emb, text_emb)])
  manifest = _manifest(
      layout, temperature=temperature, bias=bias,
      dataset_fingerprint=dataset_fingerprint,
      checkpoint_fingerprint=checkpoint_fingerprint,
      checkpoint_step=checkpoint_step, model=model_description)
  _publish(staging, cache_dir, manifest)
  return manifest


def _manifest(layout, **fields):
  manifest = dict(
      format_version=FORMAT_VERSION, count=layout.count, dim=layout.dim,
      dtype=layout.dtype_name, shard_rows=layout.shard_rows,
      shards=[dict(file=layout.shard_name(s), bytes=layout.shard_bytes(s))
              for s in range(layout.num_shards)],
      row=(f"image[{layout.dim}] text[{layout.dim}] "
           f"checksum[{_CHECK_BYTES} bytes]"))
  manifest.update(fields)
  for key in ("temperature", "bias"):
    manifest[key] = float(manifest[key])
  manifest["checkpoint_step"] = int(manifest["checkpoint_step"])
  return manifest


def _write_shards(staging, layout, pieces):
  """Streams `pieces` — `(start, image [n, d], text [n, d])` in record
  order, covering all records — into the shard files, each written front to
  back (an object store cannot be written in place)."""
  shard, out, written = -1, None, 0
  try:
    for start, image, text in pieces:
      rows = layout.encode(image, text, start)
      offset = 0
      while offset < len(rows):
        if out is None or written == layout.shard_range(shard)[1]:
          if out is not None:
            out.close()
          shard += 1
          out = (staging / layout.shard_name(shard)).open("wb")
          out.write(layout.header(shard))
        take = min(len(rows) - offset, layout.shard_range(shard)[1] - written)
        out.write(rows[offset:offset + take].tobytes())
        offset += take
        written += take
  finally:
    if out is not None:
      out.close()


def _staging_dir(cache_dir, local_staging):
  """An empty directory to write the cache's shards into before `_publish`.

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
    shard_bytes: about how large each shard of the finished cache is.
  """

  def __init__(self, cache_dir, *, count, chunk_size, identity,
               shard_bytes=DEFAULT_SHARD_BYTES):
    if count <= 0 or chunk_size <= 0:
      raise CacheError(f"nothing to build: count={count}, "
                       f"chunk_size={chunk_size}")
    _check_dtype(identity.get("dtype", "float32"))
    self.cache_dir = cache_dir.rstrip("/")
    self.partial = self.cache_dir + ".partial"
    self.count, self.chunk_size = count, chunk_size
    self.shard_bytes = shard_bytes
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
        storage.write_bytes_atomically(
            build_file, json.dumps(self.identity, indent=2,
                                   sort_keys=True).encode())

  def _locked(self):
    """Exclusive locally. An object store has no lock: there two shards of
    one build starting at once can at worst delete chunks the other wrote
    (a rerun rebuilds them), and two finishing at once may both assemble
    (see the module doc). As locally, two different builds must not run
    at once into one cache directory."""
    if not is_local(self.cache_dir):
      return contextlib.nullcontext()
    return storage.file_lock(self.cache_dir + ".lock")

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
    _check_embeddings(image_emb, text_emb, f"records [{start}, {stop})")
    if len(image_emb) != stop - start:
      raise CacheError(f"chunk [{start}, {stop}) got {len(image_emb)} rows")
    chunk = io.BytesIO()
    np.savez(chunk, image=image_emb, text=text_emb)
    storage.write_bytes_atomically(self._chunk_path(start, stop),
                                   chunk.getvalue())

  def _load_chunk(self, start, stop):
    path = self._chunk_path(start, stop)
    try:
      with path.open("rb") as f:
        with np.load(f) as chunk:
          return chunk["image"], chunk["text"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
      raise CacheError(f"build chunk {path} is unreadable; delete it and "
                       "rerun the same command (the build resumes)") from None

  def _read_chunks(self, dim):
    for start, stop in self.chunks:
      image, text = self._load_chunk(start, stop)
      for name, array in (("image", image), ("text", text)):
        if array.shape != (stop - start, dim):
          raise CacheError(
              f"chunk [{start}, {stop}) holds {name} embeddings of shape "
              f"{array.shape}, expected {(stop - start, dim)}; delete "
              f"{self.partial} and rebuild")
      yield start, image, text

  def finish(self, **manifest_fields):
    """Assembles the cache if every chunk is there.

    Args:
      **manifest_fields: temperature, bias, checkpoint_step, model, and
        anything else to record.
    Returns:
      The manifest, or None while chunks are missing (other shards).
    """
    with self._locked():
      partial = epath.Path(self.partial)
      if not (partial / "build.json").exists():  # Another shard finished it.
        return read_manifest(self.cache_dir)
      if self.missing():
        return None
      dim = self._load_chunk(*self.chunks[0])[0].shape[1]
      layout = Layout.for_shard_bytes(
          self.count, dim, self.identity.get("dtype", "float32"),
          self.shard_bytes)
      staging = _staging_dir(self.cache_dir, partial / "assembled")
      _write_shards(staging, layout, self._read_chunks(dim))
      manifest = _manifest(
          layout, chunks=len(self.chunks),
          dataset_fingerprint=self.identity["dataset_fingerprint"],
          checkpoint_fingerprint=self.identity["checkpoint_fingerprint"],
          **manifest_fields)
      _publish(staging, self.cache_dir, manifest)
      # build.json goes first: without it a late shard reads the manifest
      # instead of assembling again from chunks being deleted.
      (partial / "build.json").unlink()
      partial.rmtree()
      return manifest


# ---------------------------------------------------------------- reading --


def read_manifest(cache_dir):
  path = epath.Path(cache_dir) / MANIFEST
  if not path.exists():
    raise CacheError(f"no reference cache at {cache_dir} ({MANIFEST} missing); "
                     "build it with `python -m jest_jax.cache_reference "
                     "--workdir REFERENCE_WORKDIR`")
  try:
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise CacheError(f"reference cache manifest {path} is unreadable "
                     f"({type(e).__name__}); {_REBUILD}") from None
  return manifest


def _open_object(path):
  """A binary file object on `path`, read by `seek` + `read` (ranges)."""
  return path.open("rb")


class ReferenceCache:
  """An opened cache; reads rows on demand (thread-safe, picklable: grain
  threads and worker processes call `read`).

  Attributes: `manifest` (dict), `count`, `dim`, `dtype` (stored NumPy
  dtype), `temperature`, `bias` (float32 scalars), `cache_dir`.
  """

  def __init__(self, cache_dir, manifest):
    self.cache_dir, self.manifest = os.fspath(cache_dir), manifest
    self.layout = Layout(manifest["count"], manifest["dim"],
                         manifest["dtype"], manifest["shard_rows"])
    self.count, self.dim = self.layout.count, self.layout.dim
    self.dtype = self.layout.dtype
    self.temperature = np.float32(manifest["temperature"])
    self.bias = np.float32(manifest["bias"])
    self._local = is_local(self.cache_dir)
    self._reset()

  def _reset(self):
    self._lock = threading.Lock()
    self._maps = {}  # shard -> memory map (local).
    self._checked = set()  # Shards whose header was verified (object store).

  def __getstate__(self):
    state = dict(self.__dict__)
    for key in ("_lock", "_maps", "_checked"):
      del state[key]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._reset()

  def _path(self, shard):
    return epath.Path(self.cache_dir) / self.layout.shard_name(shard)

  def _fail(self, shard, why):
    raise CacheError(f"reference cache file {self._path(shard)} {why}; "
                     f"{_REBUILD}")

  def _memory_map(self, shard):
    with self._lock:
      if shard not in self._maps:
        start, stop = self.layout.shard_range(shard)
        header = self.layout.header(shard)
        path = os.fspath(self._path(shard))
        with open(path, "rb") as f:
          if f.read(len(header)) != header:
            self._fail(shard, "does not hold the rows its manifest describes")
        # Rows as raw bytes: copying them is a memcpy whatever the dtype
        # (NumPy copies bfloat16 elements one by one).
        self._maps[shard] = np.memmap(
            path, np.uint8, "r", offset=len(header),
            shape=(stop - start, self.layout.row_bytes))
      return self._maps[shard]

  def _read_ranges(self, shard, rows):
    """Rows `rows` (sorted, unique, shard-relative) of a shard in an object
    store: one byte-range read per run of consecutive rows."""
    header = self.layout.header(shard)
    out = np.empty((len(rows), self.layout.row_bytes), np.uint8)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    with _open_object(self._path(shard)) as f:
      if shard not in self._checked:
        if f.read(len(header)) != header:
          self._fail(shard, "does not hold the rows its manifest describes")
        self._checked.add(shard)
      for lo, hi in zip(np.concatenate([[0], breaks]),
                        np.concatenate([breaks, [len(rows)]])):
        f.seek(len(header) + int(rows[lo]) * self.layout.row_bytes)
        size = (hi - lo) * self.layout.row_bytes
        data = f.read(size)
        if len(data) != size:
          self._fail(shard, "is truncated")
        out[lo:hi] = np.frombuffer(data, np.uint8).reshape(
            hi - lo, self.layout.row_bytes)
    return out

  def rows(self, indices):
    """The stored rows `[n, width]` of records `indices`, checksums
    verified."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.count):
      raise CacheError(f"record index out of range [0, {self.count}) for "
                       f"reference cache {self.cache_dir}")
    unique, inverse = np.unique(indices, return_inverse=True)
    out = np.empty((len(unique), self.layout.row_bytes), np.uint8)
    shards = unique // self.layout.shard_rows
    bounds = np.flatnonzero(np.diff(shards)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]),
                      np.concatenate([bounds, [len(unique)]])):
      if lo == hi:  # No indices at all.
        continue
      shard = int(shards[lo])
      local = unique[lo:hi] - shard * self.layout.shard_rows
      if self._local:
        out[lo:hi] = self._memory_map(shard)[local]
      else:
        out[lo:hi] = self._read_ranges(shard, local)
    self._verify(out.view(self.layout.dtype), unique)
    return out[inverse.reshape(-1)].view(self.layout.dtype)

  def _verify(self, rows, indices):
    bad = np.flatnonzero(self.layout.checksums(rows, indices)
                         != self.layout.stored_checksums(rows))
    if bad.size:
      record = int(indices[bad[0]])
      self._fail(record // self.layout.shard_rows,
                 f"fails its checksum at record {record} (changed or "
                 "corrupted)")

  def read(self, indices):
    """`selection.Embeddings` of records `indices` (int `[n]`): `image`,
    `text` `[n, d]` in the stored dtype, `temperature`, `bias` float32."""
    rows = self.rows(indices).view(np.uint8)
    size = self.dim * self.dtype.itemsize
    part = lambda i: np.ascontiguousarray(
        rows[:, i * size:(i + 1) * size]).view(self.dtype)
    return selection.Embeddings(image=part(0), text=part(1),
                                temperature=self.temperature, bias=self.bias)

  def verify_all(self, block=65536):
    """Reads and verifies every row (what `open_cache` does for a small
    local cache)."""
    for start in range(0, self.count, block):
      self.rows(np.arange(start, min(start + block, self.count)))


def open_cache(cache_dir, *, dataset_fingerprint, count,
               checkpoint_fingerprint=None, verify_all=None):
  """Opens a cache and checks it against the data (and checkpoint) in use.

  Args:
    cache_dir: directory written by `write` or `CacheBuilder`.
    dataset_fingerprint: fingerprint of the split the run trains on.
    count: number of records in that split.
    checkpoint_fingerprint: if given, the reference checkpoint the cache must
      come from.
    verify_all: read and verify every row now (default: for a local cache
      of at most `FULL_CHECK_BYTES`); rows are verified whenever read anyway.
  Returns:
    A `ReferenceCache`.
  Raises:
    CacheError: a mismatch, a missing, truncated or changed file, an old
      format.
  """
  manifest = read_manifest(cache_dir)
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise CacheError(f"reference cache {cache_dir} has format {version} "
                     f"(this jest_jax reads format {FORMAT_VERSION}, stored "
                     f"in shards); {_REBUILD}")
  missing = sorted({"count", "dim", "dtype", "shard_rows", "temperature",
                    "bias", "dataset_fingerprint", "checkpoint_fingerprint"}
                   - set(manifest))
  if missing or manifest["dtype"] not in _DTYPES:
    raise CacheError(f"reference cache manifest in {cache_dir} lacks "
                     f"{missing or 'a known dtype'}; {_REBUILD}")
  if manifest["dataset_fingerprint"] != dataset_fingerprint:
    raise CacheError(
        f"reference cache {cache_dir} was built for dataset "
        f"{manifest['dataset_fingerprint']}, but this run trains on "
        f"{dataset_fingerprint}; {_REBUILD} for this data")
  if manifest["count"] != count:
    raise CacheError(f"reference cache {cache_dir} holds {manifest['count']} "
                     f"examples, the data has {count}; {_REBUILD}")
  if (checkpoint_fingerprint is not None
      and manifest["checkpoint_fingerprint"] != checkpoint_fingerprint):
    raise CacheError(
        f"reference cache {cache_dir} was built from checkpoint "
        f"{manifest['checkpoint_fingerprint']}, but the reference checkpoint "
        f"is now {checkpoint_fingerprint}; {_REBUILD}")
  cache = ReferenceCache(cache_dir, manifest)
  total = 0
  for shard in range(cache.layout.num_shards):
    path = cache._path(shard)  # pylint: disable=protected-access
    expected = cache.layout.shard_bytes(shard)
    try:
      size = path.stat().length
    except OSError:
      raise CacheError(f"reference cache file {path} is missing; "
                       f"{_REBUILD}") from None
    if size != expected:
      raise CacheError(f"reference cache file {path} has {size} bytes, "
                       f"expected {expected} (truncated or replaced); "
                       f"{_REBUILD}")
    total += size
  if verify_all is None:
    verify_all = is_local(cache_dir) and total <= FULL_CHECK_BYTES
  if verify_all:
    cache.verify_all()
  return cache
