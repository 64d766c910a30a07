"""The reference cache round-trips and refuses anything it was not built for,
on a local disk and in an object store (`gs://`, through etils.epath)."""

import os

import numpy as np
import pytest

from jest_jax import reference_cache


def _write(path, n=20, d=8, dtype="float32", **overrides):
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, n, d)).astype(np.float32)
  kwargs = dict(temperature=12.5, bias=-9.0, dataset_fingerprint="data1",
                checkpoint_fingerprint="ckpt1", checkpoint_step=100,
                model_description={"variant": "pico"}, dtype=dtype)
  kwargs.update(overrides)
  reference_cache.write(str(path), image, text, **kwargs)
  return image, text


def _load(path, **overrides):
  kwargs = dict(dataset_fingerprint="data1", count=20,
                checkpoint_fingerprint="ckpt1")
  kwargs.update(overrides)
  return reference_cache.load(str(path), **kwargs)


def test_round_trip_returns_the_written_embeddings(tmp_path):
  image, text = _write(tmp_path / "cache")
  cache = _load(tmp_path / "cache")
  np.testing.assert_array_equal(cache.image, image)
  np.testing.assert_array_equal(cache.text, text)
  assert (cache.temperature, cache.bias) == (12.5, -9.0)
  got_image, got_text = cache.take(np.array([3, 1]))
  np.testing.assert_array_equal(got_image, image[[3, 1]])
  np.testing.assert_array_equal(got_text, text[[3, 1]])


def test_bfloat16_cache_round_trips_within_bfloat16_precision(tmp_path):
  image, _ = _write(tmp_path / "cache", dtype="bfloat16")
  cache = _load(tmp_path / "cache")
  assert cache.image.dtype == np.float32
  np.testing.assert_allclose(cache.image, image, rtol=1e-2, atol=1e-2)
  assert os.path.getsize(tmp_path / "cache" / "image.npy") < 20 * 8 * 4


def test_cache_for_other_data_is_refused(tmp_path):
  _write(tmp_path / "cache")
  with pytest.raises(reference_cache.CacheError,
                     match="built for dataset data1.*trains on data2"):
    _load(tmp_path / "cache", dataset_fingerprint="data2")


def test_cache_from_another_checkpoint_is_refused(tmp_path):
  _write(tmp_path / "cache")
  with pytest.raises(reference_cache.CacheError,
                     match="built from checkpoint ckpt1.*now ckpt2"):
    _load(tmp_path / "cache", checkpoint_fingerprint="ckpt2")


def test_cache_with_wrong_count_is_refused(tmp_path):
  _write(tmp_path / "cache")
  with pytest.raises(reference_cache.CacheError, match="holds 20 examples, "
                     "the data has 21"):
    _load(tmp_path / "cache", count=21)


def test_truncated_cache_file_is_detected(tmp_path):
  _write(tmp_path / "cache")
  path = tmp_path / "cache" / "text.npy"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(reference_cache.CacheError, match="text.npy"):
    _load(tmp_path / "cache")


def test_non_finite_cache_is_detected(tmp_path):
  _write(tmp_path / "cache")
  path = tmp_path / "cache" / "image.npy"
  array = np.load(path)
  array[5, 2] = np.nan
  np.save(path, array)
  with pytest.raises(reference_cache.CacheError, match="non-finite"):
    _load(tmp_path / "cache")


def test_missing_cache_says_how_to_build_it(tmp_path):
  with pytest.raises(reference_cache.CacheError,
                     match="no reference cache.*jest_jax.cache_reference"):
    _load(tmp_path / "nothing")


def test_writing_non_finite_embeddings_is_refused_and_keeps_old_cache(tmp_path):
  image, _ = _write(tmp_path / "cache")
  bad = np.full((20, 8), np.nan, np.float32)
  with pytest.raises(reference_cache.CacheError, match="non-finite"):
    reference_cache.write(
        str(tmp_path / "cache"), bad, bad, temperature=1.0, bias=0.0,
        dataset_fingerprint="data1", checkpoint_fingerprint="ckpt1",
        checkpoint_step=1, model_description={})
  np.testing.assert_array_equal(_load(tmp_path / "cache").image, image)


def test_params_fingerprint_changes_with_any_value():
  params = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.ones(4)}}
  before = reference_cache.params_fingerprint(params)
  assert reference_cache.params_fingerprint(params) == before
  params["b"]["c"][2] = 1.5
  assert reference_cache.params_fingerprint(params) != before


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
      str(path), count=23, chunk_size=5, identity=dict(IDENTITY, **identity))


def _write_chunks(builder, image, text, chunks):
  for start, stop in chunks:
    builder.write_chunk(start, image[start:stop], text[start:stop])


def test_interrupted_build_leaves_no_cache_and_resumes_to_the_same_cache(
    tmp_path):
  image, text = _embeddings()
  first = _builder(tmp_path / "cache")
  _write_chunks(first, image, text, first.chunks[:2])  # Then "preempted".
  assert first.finish(**FIELDS) is None
  assert not os.path.exists(tmp_path / "cache")
  with pytest.raises(reference_cache.CacheError, match="no reference cache"):
    _load(tmp_path / "cache", count=23)
  resumed = _builder(tmp_path / "cache")
  assert resumed.missing() == resumed.chunks[2:]  # Kept the done chunks.
  _write_chunks(resumed, image, text, resumed.missing())
  manifest = resumed.finish(**FIELDS)
  assert manifest["count"] == 23 and manifest["chunks"] == 5
  cache = _load(tmp_path / "cache", count=23)
  np.testing.assert_array_equal(cache.image, image)
  np.testing.assert_array_equal(cache.text, text)
  assert not os.path.exists(str(tmp_path / "cache") + ".partial")


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
  np.testing.assert_array_equal(_load(tmp_path / "cache", count=23).text, text)


def test_partial_build_for_other_data_is_discarded_not_mixed_in(tmp_path):
  image, text = _embeddings()
  stale = _builder(tmp_path / "cache", dataset_fingerprint="old")
  _write_chunks(stale, image + 1.0, text, stale.chunks[:3])
  fresh = _builder(tmp_path / "cache")
  assert fresh.missing() == fresh.chunks
  _write_chunks(fresh, image, text, fresh.chunks)
  fresh.finish(**FIELDS)
  np.testing.assert_array_equal(_load(tmp_path / "cache", count=23).image,
                                image)


def test_builder_refuses_non_finite_chunks_and_stores_bfloat16(tmp_path):
  image, text = _embeddings()
  builder = _builder(tmp_path / "cache", dtype="bfloat16")
  bad = image[:5].copy()
  bad[1, 1] = np.inf
  with pytest.raises(reference_cache.CacheError, match=r"non-finite.*\[0, 5\)"):
    builder.write_chunk(0, bad, text[:5])
  _write_chunks(builder, image, text, builder.chunks)
  assert builder.finish(**FIELDS)["dtype"] == "bfloat16"
  cache = _load(tmp_path / "cache", count=23)
  np.testing.assert_allclose(cache.image, image, rtol=1e-2, atol=1e-2)


def test_assembled_arrays_are_the_bytes_numpy_saves(tmp_path):
  image, text = _embeddings()
  builder = _builder(tmp_path / "cache", dtype="bfloat16")
  _write_chunks(builder, image, text, builder.chunks)
  builder.finish(**FIELDS)
  for name, array in (("image", image), ("text", text)):
    np.save(tmp_path / "expected.npy", array.astype(reference_cache._DTYPES[  # pylint: disable=protected-access
        "bfloat16"]))
    assert ((tmp_path / "cache" / f"{name}.npy").read_bytes()
            == (tmp_path / "expected.npy").read_bytes())


# ------------------------------------------------------------- object store --



def test_gcs_cache_round_trips_and_a_rewrite_replaces_it(fake_gcs):
  _write("gs://bucket/cache", d=6)
  image, text = _write("gs://bucket/cache", dtype="bfloat16")
  cache = _load("gs://bucket/cache")
  assert cache.manifest["dtype"] == "bfloat16" and cache.image.shape == (20, 8)
  np.testing.assert_allclose(cache.image, image, rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(cache.text, text, rtol=1e-2, atol=1e-2)
  assert sorted(os.listdir(fake_gcs / "bucket")) == ["cache"]


def test_gcs_truncated_cache_file_is_detected(fake_gcs):
  _write("gs://bucket/cache")
  path = fake_gcs / "bucket" / "cache" / "image.npy"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(reference_cache.CacheError, match="image.npy"):
    _load("gs://bucket/cache")


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
  for name in ("image.npy", "text.npy", "manifest.json"):
    assert ((fake_gcs / "bucket" / "cache" / name).read_bytes()
            == (tmp_path / "cache" / name).read_bytes())
  assert sorted(os.listdir(fake_gcs / "bucket")) == ["cache"]
  np.testing.assert_array_equal(_load("gs://bucket/cache", count=23).image,
                                image)


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
  with pytest.raises(reference_cache.CacheError, match="no reference cache"):
    _load("gs://bucket/cache", count=23)
  assert builder.finish(**FIELDS)["dataset_fingerprint"] == "data2"
  np.testing.assert_array_equal(
      _load("gs://bucket/cache", count=23, dataset_fingerprint="data2").text,
      text)
