"""The reference cache: sharded, read row by row, refusing anything it was not
built for, on a local disk and in an object store (`gs://`, through
etils.epath).

The slow twin of every read is `np.load` of every shard file, concatenated,
indexed by the record indices.
"""

import json
import os
import pickle
import threading
import time

import ml_dtypes
import numpy as np
import pytest

from jest_jax import reference_cache
from jest_jax.data import storage

DTYPES = {"float32": np.float32, "float16": np.float16,
          "bfloat16": ml_dtypes.bfloat16}
KWARGS = dict(temperature=12.5, bias=-9.0, dataset_fingerprint="data1",
              checkpoint_fingerprint="ckpt1", checkpoint_step=100,
              model_description={"variant": "pico"})


def _write(path, n=20, d=8, dtype="float32", shard_bytes=400, **overrides):
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, n, d)).astype(np.float32)
  reference_cache.write(str(path), image, text, dtype=dtype,
                        shard_bytes=shard_bytes, **dict(KWARGS, **overrides))
  return image, text


def _load(path, count=20, **overrides):
  kwargs = dict(dataset_fingerprint="data1", checkpoint_fingerprint="ckpt1")
  kwargs.update(overrides)
  return reference_cache.open_cache(str(path), count=count, **kwargs)


def _whole(path):
  """Slow twin: every shard `np.load`ed whole -> (image, text) `[N, d]`."""
  manifest = json.loads((path / "manifest.json").read_text())
  rows = np.concatenate([np.load(path / shard["file"])
                         for shard in manifest["shards"]])
  rows = rows.view(DTYPES[manifest["dtype"]])
  d = manifest["dim"]
  return rows[:, :d], rows[:, d:2 * d]


def _cache_files(path):
  return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def _one_line_error(fn, match):
  with pytest.raises(reference_cache.CacheError, match=match) as error:
    fn()
  assert "\n" not in str(error.value)
  return str(error.value)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_rows_read_across_shards_equal_the_rows_written(tmp_path, dtype):
  image, text = _write(tmp_path / "cache", n=97, d=6, dtype=dtype,
                       shard_bytes=300)
  cache = _load(tmp_path / "cache", count=97)
  assert cache.layout.num_shards > 5  # Tiny shards: reads cross them.
  whole_image, whole_text = _whole(tmp_path / "cache")
  np.testing.assert_array_equal(whole_image, image.astype(DTYPES[dtype]))
  np.testing.assert_array_equal(whole_text, text.astype(DTYPES[dtype]))
  rng = np.random.default_rng(1)
  for size in (1, 5, 40, 200):  # Repeats and any order.
    indices = rng.integers(0, 97, size)
    got = cache.read(indices)
    assert got.image.dtype == DTYPES[dtype] and got.image.shape == (size, 6)
    np.testing.assert_array_equal(got.image, whole_image[indices])
    np.testing.assert_array_equal(got.text, whole_text[indices])
  assert got.temperature == np.float32(12.5) and got.bias == np.float32(-9.0)
  assert got.temperature.dtype == np.float32


def test_a_pickled_cache_reads_the_same_rows(tmp_path):
  """grain worker processes receive the opened cache by pickle."""
  _write(tmp_path / "cache")
  cache = _load(tmp_path / "cache")
  indices = np.array([19, 0, 7, 7])
  cache.read(indices)  # Opens memory maps, which do not travel.
  copy = pickle.loads(pickle.dumps(cache))
  np.testing.assert_array_equal(copy.read(indices).text,
                                cache.read(indices).text)


def test_bfloat16_cache_is_half_the_float32_size(tmp_path):
  _write(tmp_path / "f32", shard_bytes=1 << 20)
  _write(tmp_path / "bf16", dtype="bfloat16", shard_bytes=1 << 20)
  size = lambda name: sum(len(b) for k, b in _cache_files(tmp_path / name)
                          .items() if k.endswith(".npy"))
  assert size("bf16") < 0.6 * size("f32")


def test_cache_for_other_data_is_refused(tmp_path):
  _write(tmp_path / "cache")
  _one_line_error(
      lambda: _load(tmp_path / "cache", dataset_fingerprint="data2"),
      "built for dataset data1.*trains on data2")


def test_cache_from_another_checkpoint_is_refused(tmp_path):
  _write(tmp_path / "cache")
  _one_line_error(
      lambda: _load(tmp_path / "cache", checkpoint_fingerprint="ckpt2"),
      "built from checkpoint ckpt1.*now ckpt2")


def test_cache_with_wrong_count_is_refused(tmp_path):
  _write(tmp_path / "cache")
  _one_line_error(lambda: _load(tmp_path / "cache", count=21),
                  "holds 20 examples, the data has 21")


def _first_shard(path):
  return path / json.loads((path / "manifest.json").read_text())[
      "shards"][0]["file"]


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_or_empty_shard_is_one_line_and_changes_nothing(tmp_path,
                                                                  keep):
  _write(tmp_path / "cache")
  shard = _first_shard(tmp_path / "cache")
  data = shard.read_bytes()
  shard.write_bytes(data[:int(len(data) * keep)])
  before = _cache_files(tmp_path / "cache")
  _one_line_error(lambda: _load(tmp_path / "cache"),
                  f"{shard.name} has {int(len(data) * keep)} bytes.*rebuild")
  assert _cache_files(tmp_path / "cache") == before


def test_empty_or_garbled_manifest_is_one_line(tmp_path):
  _write(tmp_path / "cache")
  for text in ("", "[1, 2", "[]"):
    (tmp_path / "cache" / "manifest.json").write_text(text)
    _one_line_error(lambda: _load(tmp_path / "cache"),
                    "manifest.*unreadable.*rebuild")


def test_old_single_file_cache_is_refused_with_a_rebuild_hint(tmp_path):
  (tmp_path / "cache").mkdir()
  np.save(tmp_path / "cache" / "image.npy", np.zeros((20, 8), np.float32))
  np.save(tmp_path / "cache" / "text.npy", np.zeros((20, 8), np.float32))
  (tmp_path / "cache" / "manifest.json").write_text(json.dumps(dict(
      format_version=1, count=20, dim=8, dtype="float32",
      dataset_fingerprint="data1", checkpoint_fingerprint="ckpt1")))
  _one_line_error(lambda: _load(tmp_path / "cache"),
                  "has format 1 .*reads format 2.*jest_jax.cache_reference")


def _edit_one_value(path, record, column, value):
  """Changes one stored value in place, as a careless edit would."""
  manifest = json.loads((path / "manifest.json").read_text())
  shard = record // manifest["shard_rows"]
  file = path / manifest["shards"][shard]["file"]
  rows = np.load(file, mmap_mode="r+")
  rows.view(DTYPES[manifest["dtype"]])[record % manifest["shard_rows"],
                                       column] = value
  rows.flush()
  del rows


@pytest.mark.parametrize("value", [0.25, np.nan])
def test_an_edited_value_is_caught_at_open_of_a_small_cache(tmp_path, value):
  image, _ = _write(tmp_path / "cache")
  _edit_one_value(tmp_path / "cache", 13, 2, np.float32(image[13, 2] + value))
  before = _cache_files(tmp_path / "cache")
  _one_line_error(lambda: _load(tmp_path / "cache"),
                  "fails its checksum at record 13.*rebuild")
  assert _cache_files(tmp_path / "cache") == before


def test_an_edited_value_is_caught_when_its_row_is_read(tmp_path):
  """A cache too large to verify at open: each row is verified when read."""
  _, text = _write(tmp_path / "cache", dtype="bfloat16")
  _edit_one_value(tmp_path / "cache", 4, 8 + 3, text[4, 3] * 2 + 1)
  cache = _load(tmp_path / "cache", verify_all=False)
  cache.read(np.array([0, 3, 5, 19]))  # Other rows still read.
  _one_line_error(lambda: cache.read(np.array([0, 4])),
                  "fails its checksum at record 4")


def test_a_row_moved_to_another_position_is_caught(tmp_path):
  _write(tmp_path / "cache", shard_bytes=1 << 20)
  file = _first_shard(tmp_path / "cache")
  rows = np.load(file, mmap_mode="r+")
  rows[[2, 3]] = rows[[3, 2]]
  rows.flush()
  del rows
  _one_line_error(lambda: _load(tmp_path / "cache"),
                  "fails its checksum at record 2")


def test_missing_cache_says_how_to_build_it(tmp_path):
  _one_line_error(lambda: _load(tmp_path / "nothing"),
                  "no reference cache.*jest_jax.cache_reference")


def test_writing_non_finite_embeddings_is_refused_and_keeps_old_cache(tmp_path):
  image, _ = _write(tmp_path / "cache")
  before = _cache_files(tmp_path / "cache")
  bad = np.full((20, 8), np.nan, np.float32)
  _one_line_error(lambda: reference_cache.write(
      str(tmp_path / "cache"), bad, bad, **KWARGS), "non-finite")
  assert _cache_files(tmp_path / "cache") == before
  np.testing.assert_array_equal(_load(tmp_path / "cache").read(
      np.arange(20)).image, image)


def test_params_fingerprint_changes_with_any_value():
  params = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.ones(4)}}
  before = reference_cache.params_fingerprint(params)
  assert reference_cache.params_fingerprint(params) == before
  params["b"]["c"][2] = 1.5
  assert reference_cache.params_fingerprint(params) != before


def _vm_rss_bytes():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise AssertionError("no VmRSS in /proc/self/status")


def test_reading_a_cache_of_gigabytes_touches_only_the_rows_read(tmp_path):
  """A 4 GiB cache (sparse files: only the rows read hold data) read in
  batches grows resident memory by far less than its size."""
  count, dim = 9_000_000, 64
  layout = reference_cache.Layout(count, dim, "float32", shard_rows=1 << 20)
  cache_dir = tmp_path / "cache"
  cache_dir.mkdir()
  rng = np.random.default_rng(0)
  batches = [rng.choice(count, 320, replace=False) for _ in range(20)]
  wanted = np.unique(np.concatenate(batches))
  image, text = rng.normal(size=(2, len(wanted), dim)).astype(np.float32)
  for shard in range(layout.num_shards):
    with open(cache_dir / layout.shard_name(shard), "wb") as f:
      f.write(layout.header(shard))
      f.truncate(layout.shard_bytes(shard))
      start, stop = layout.shard_range(shard)
      for i in np.flatnonzero((wanted >= start) & (wanted < stop)):
        f.seek(len(layout.header(shard))
               + (wanted[i] - start) * layout.row_bytes)
        f.write(layout.encode(image[i:i + 1], text[i:i + 1],
                              wanted[i]).tobytes())
  manifest = reference_cache._manifest(  # pylint: disable=protected-access
      layout, temperature=1.0, bias=0.0, dataset_fingerprint="big",
      checkpoint_fingerprint="ckpt", checkpoint_step=1, model={})
  (cache_dir / "manifest.json").write_text(json.dumps(manifest))
  total = sum(os.path.getsize(cache_dir / s["file"])
              for s in manifest["shards"])
  assert total > 4 * 2**30

  before = _vm_rss_bytes()
  cache = reference_cache.open_cache(str(cache_dir), dataset_fingerprint="big",
                                     count=count)
  for batch in batches:
    got = cache.read(batch)
    rows = np.searchsorted(wanted, batch)
    np.testing.assert_array_equal(got.image, image[rows])
    np.testing.assert_array_equal(got.text, text[rows])
  assert _vm_rss_bytes() - before < 64 * 2**20


# ------------------------------------------------- resumable, sharded builds --

IDENTITY = dict(dataset_fingerprint="data1", checkpoint_fingerprint="ckpt1",
                dtype="float32")
FIELDS = dict(temperature=12.5, bias=-9.0, checkpoint_step=100,
              model={"variant": "pico"})


def _embeddings(n=23, d=4):
  rng = np.random.default_rng(1)
  return rng.normal(size=(2, n, d)).astype(np.float32)


def _builder(path, **identity):
  return reference_cache.CacheBuilder(
      str(path), count=23, chunk_size=5, identity=dict(IDENTITY, **identity),
      shard_bytes=200)


def _write_chunks(builder, image, text, chunks):
  for start, stop in chunks:
    builder.write_chunk(start, image[start:stop], text[start:stop])


def _read_all(path, count=23, **kwargs):
  return _load(path, count=count, **kwargs).read(np.arange(count))


def test_interrupted_build_leaves_no_cache_and_resumes_to_the_same_cache(
    tmp_path):
  image, text = _embeddings()
  first = _builder(tmp_path / "cache")
  _write_chunks(first, image, text, first.chunks[:2])  # Then "preempted".
  assert first.finish(**FIELDS) is None
  assert not os.path.exists(tmp_path / "cache")
  _one_line_error(lambda: _load(tmp_path / "cache", count=23),
                  "no reference cache")
  resumed = _builder(tmp_path / "cache")
  assert resumed.missing() == resumed.chunks[2:]  # Kept the done chunks.
  _write_chunks(resumed, image, text, resumed.missing())
  manifest = resumed.finish(**FIELDS)
  assert manifest["count"] == 23 and manifest["chunks"] == 5
  assert len(manifest["shards"]) == 5  # 200-byte shards: 5 rows of 40 bytes.
  cache = _read_all(tmp_path / "cache")
  np.testing.assert_array_equal(cache.image, image)
  np.testing.assert_array_equal(cache.text, text)
  assert sorted(os.listdir(tmp_path)) == ["cache"]  # No .partial, no .lock.


def test_shards_build_disjoint_chunks_and_the_last_assembles(tmp_path):
  image, text = _embeddings()
  shards = [_builder(tmp_path / "cache") for _ in range(3)]
  owned = [shard.shard(index, 3) for index, shard in enumerate(shards)]
  assert sorted(sum(owned, [])) == shards[0].chunks
  for shard, chunks in zip(shards[:2], owned[:2]):
    _write_chunks(shard, image, text, chunks)
    assert shard.finish(**FIELDS) is None
  _write_chunks(shards[2], image, text, owned[2])
  assert shards[2].finish(**FIELDS)["count"] == 23
  assert shards[0].finish(**FIELDS)["count"] == 23  # Already assembled.
  np.testing.assert_array_equal(_read_all(tmp_path / "cache").text, text)


def test_partial_build_for_other_data_is_discarded_not_mixed_in(tmp_path):
  image, text = _embeddings()
  stale = _builder(tmp_path / "cache", dataset_fingerprint="old")
  _write_chunks(stale, image + 1.0, text, stale.chunks[:3])
  fresh = _builder(tmp_path / "cache")
  assert fresh.missing() == fresh.chunks
  _write_chunks(fresh, image, text, fresh.chunks)
  fresh.finish(**FIELDS)
  np.testing.assert_array_equal(_read_all(tmp_path / "cache").image, image)


def test_builder_refuses_non_finite_chunks_and_stores_bfloat16(tmp_path):
  image, text = _embeddings()
  builder = _builder(tmp_path / "cache", dtype="bfloat16")
  bad = image[:5].copy()
  bad[1, 1] = np.inf
  _one_line_error(lambda: builder.write_chunk(0, bad, text[:5]),
                  r"non-finite.*\[0, 5\)")
  _write_chunks(builder, image, text, builder.chunks)
  assert builder.finish(**FIELDS)["dtype"] == "bfloat16"
  got = _read_all(tmp_path / "cache")
  assert got.image.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(got.image, image.astype(ml_dtypes.bfloat16))


def test_built_cache_has_the_bytes_of_a_cache_written_whole(tmp_path):
  image, text = _embeddings()
  builder = _builder(tmp_path / "built", dtype="bfloat16")
  _write_chunks(builder, image, text, builder.chunks)
  manifest = builder.finish(**FIELDS)
  reference_cache.write(str(tmp_path / "whole"), image, text,
                        dtype="bfloat16", shard_bytes=200, **KWARGS)
  for shard in manifest["shards"]:
    assert ((tmp_path / "built" / shard["file"]).read_bytes()
            == (tmp_path / "whole" / shard["file"]).read_bytes())
  whole_image, _ = _whole(tmp_path / "built")
  np.testing.assert_array_equal(whole_image, image.astype(ml_dtypes.bfloat16))


# ------------------------------------------------------------- object store --


def test_gcs_cache_round_trips_and_a_rewrite_replaces_it(fake_gcs):
  _write("gs://bucket/cache", d=6)
  image, text = _write("gs://bucket/cache", dtype="bfloat16")
  cache = _load("gs://bucket/cache")
  got = cache.read(np.arange(20)[::-1])
  assert cache.manifest["dtype"] == "bfloat16" and got.image.shape == (20, 8)
  np.testing.assert_array_equal(got.image,
                                image[::-1].astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(got.text,
                                text[::-1].astype(ml_dtypes.bfloat16))
  assert sorted(os.listdir(fake_gcs / "bucket")) == ["cache"]


def test_gcs_reads_only_the_byte_ranges_of_the_rows(fake_gcs, monkeypatch):
  _write("gs://bucket/cache", n=400, d=8, shard_bytes=1 << 20)
  whole_image, _ = _whole(fake_gcs / "bucket" / "cache")
  cache = _load("gs://bucket/cache", count=400)
  reads = []

  class Counting:
    def __init__(self, f):
      self.f = f
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      self.f.close()
    def seek(self, offset):
      return self.f.seek(offset)
    def read(self, size):
      data = self.f.read(size)
      reads.append(len(data))
      return data
  opened = reference_cache._open_object  # pylint: disable=protected-access
  monkeypatch.setattr(reference_cache, "_open_object",
                      lambda path: Counting(opened(path)))
  indices = np.array([7, 300, 8, 9, 150, 299])  # Runs 7-9, 150, 299-300.
  np.testing.assert_array_equal(cache.read(indices).image,
                                whole_image[indices])
  row_bytes = cache.layout.row_bytes
  header = len(cache.layout.header(0))
  assert reads == [header, 3 * row_bytes, row_bytes, 2 * row_bytes]
  reads.clear()
  cache.read(indices)  # The header is checked once.
  assert reads == [3 * row_bytes, row_bytes, 2 * row_bytes]


def test_gcs_truncated_cache_file_is_detected(fake_gcs):
  _write("gs://bucket/cache")
  path = _first_shard(fake_gcs / "bucket" / "cache")
  path.write_bytes(path.read_bytes()[:-10])
  _one_line_error(lambda: _load("gs://bucket/cache"), path.name)


def test_gcs_build_resumes_shards_and_equals_the_local_build(fake_gcs,
                                                             tmp_path):
  image, text = _embeddings()
  shards = [_builder("gs://bucket/cache") for _ in range(2)]
  _write_chunks(shards[0], image, text, shards[0].shard(0, 2)[:1])
  assert shards[0].finish(**FIELDS) is None  # Then "preempted".
  resumed = [_builder("gs://bucket/cache") for _ in range(2)]
  assert resumed[0].missing() == resumed[0].chunks[1:]
  _write_chunks(resumed[0], image, text,
                [c for c in resumed[0].shard(0, 2) if not resumed[0].done(*c)])
  _write_chunks(resumed[1], image, text, resumed[1].shard(1, 2))
  assert resumed[1].finish(**FIELDS)["count"] == 23
  assert resumed[0].finish(**FIELDS)["count"] == 23  # Already assembled.
  local = _builder(tmp_path / "cache")
  _write_chunks(local, image, text, local.chunks)
  local.finish(**FIELDS)
  assert (_cache_files(fake_gcs / "bucket" / "cache")
          == _cache_files(tmp_path / "cache"))
  assert sorted(os.listdir(fake_gcs / "bucket")) == ["cache"]
  np.testing.assert_array_equal(_read_all("gs://bucket/cache").image, image)


def test_gcs_rebuild_interrupted_while_publishing_leaves_no_mixed_cache(
    fake_gcs, monkeypatch):
  _write("gs://bucket/cache", n=23, d=4)  # An older cache.
  image, text = _embeddings()
  builder = _builder("gs://bucket/cache", dataset_fingerprint="data2")
  _write_chunks(builder, image, text, builder.chunks)

  def preempted(*args):
    raise KeyboardInterrupt
  with monkeypatch.context() as patch:
    patch.setattr(reference_cache, "_publish", preempted)
    with pytest.raises(KeyboardInterrupt):
      builder.finish(**FIELDS)
  _one_line_error(lambda: _load("gs://bucket/cache", count=23),
                  "no reference cache")
  assert builder.finish(**FIELDS)["dataset_fingerprint"] == "data2"
  np.testing.assert_array_equal(
      _read_all("gs://bucket/cache", dataset_fingerprint="data2").text, text)


def test_file_lock_is_exclusive_and_its_file_goes_with_the_holder(tmp_path):
  """Holders remove the lock file before releasing it; waiters on the
  removed file must not hold the lock alongside one who made a new file."""
  path = str(tmp_path / "build.lock")
  holders, most, errors = [0], [0], []
  guard = threading.Lock()

  def contend():
    try:
      for _ in range(40):
        with storage.file_lock(path):
          with guard:
            holders[0] += 1
            most[0] = max(most[0], holders[0])
          time.sleep(0.0005)
          with guard:
            holders[0] -= 1
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=contend) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors and most[0] == 1
  assert not os.path.exists(path)


def test_an_empty_build_chunk_is_one_line_and_the_rest_is_kept(tmp_path):
  image, text = _embeddings()
  builder = _builder(tmp_path / "cache")
  _write_chunks(builder, image, text, builder.chunks)
  chunk = builder._chunk_path(*builder.chunks[2])  # pylint: disable=protected-access
  chunk.write_bytes(b"")
  _one_line_error(lambda: builder.finish(**FIELDS),
                  f"chunk {chunk} is unreadable; delete it and rerun")
  assert not os.path.exists(tmp_path / "cache")
  chunk.unlink()
  resumed = _builder(tmp_path / "cache")
  assert resumed.missing() == [resumed.chunks[2]]
  _write_chunks(resumed, image, text, resumed.missing())
  resumed.finish(**FIELDS)
  np.testing.assert_array_equal(_read_all(tmp_path / "cache").image, image)


def test_a_manifest_without_its_fields_is_one_line(tmp_path):
  _write(tmp_path / "cache")
  path = tmp_path / "cache" / "manifest.json"
  manifest = json.loads(path.read_text())
  del manifest["shard_rows"]
  path.write_text(json.dumps(manifest))
  _one_line_error(lambda: _load(tmp_path / "cache"),
                  r"lacks \['shard_rows'\]; rebuild")
