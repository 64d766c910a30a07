"""The grain stream over the built-in corpus's ArrayRecord files.

The obvious twin of the whole pipeline (write, read, decode, tokenize) is the
in-memory corpus (`corpus.make_split`) indexed by the returned record
indices; the twin of the order is "every epoch is a permutation".
"""

import grain
import jax
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax import reference_cache
from jest_jax import selection
from jest_jax import sharding
from jest_jax import train
from jest_jax.data import corpus
from jest_jax.data import tokenizer as tokenizer_lib

N_TRAIN = 200


@pytest.fixture(scope="module")
def config_data(tmp_path_factory):
  config = config_lib.base_config()
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.n_train = N_TRAIN
  config.data.n_curated = 64
  config.data.n_retrieval = 32
  config.data.n_zeroshot = 48
  return config.data


def with_changes(config_data, **changes):
  changed = ml_collections.ConfigDict(config_data.to_dict())
  changed.update(changes)
  return changed


# ---------------------------------------------------------------- order --


def _step_indices(seed, step, batch_size, num_records):
  return input_pipeline.index_stream(seed, num_records, batch_size)[step]


def test_step_indices_are_deterministic():
  a = _step_indices(3, 7, 32, 100)
  b = _step_indices(3, 7, 32, 100)
  np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_orders():
  a = _step_indices(0, 0, 32, 1000)
  b = _step_indices(1, 0, 32, 1000)
  assert not np.array_equal(a, b)


def test_each_epoch_visits_every_example_once_in_a_new_order():
  n, batch = 100, 10
  epochs = [np.concatenate([_step_indices(5, s, batch, n)
                            for s in range(e * 10, (e + 1) * 10)])
            for e in range(2)]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])


def test_batches_straddling_epochs_continue_the_stream():
  n, batch = 10, 4  # Step 2 reads positions 8..11: two of epoch 0, two of 1.
  stream = np.concatenate([_step_indices(0, s, batch, n)
                           for s in range(5)])
  np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(stream[10:20]), np.arange(10))
  np.testing.assert_array_equal(_step_indices(0, 2, batch, n),
                                stream[8:12])


def test_the_stream_is_grains_shuffled_repeated_dataset():
  """The direct `index_shuffle` calls give the stream of grain's own
  `range(n).shuffle(seed).repeat()`, read in batches (over four epochs)."""
  n, batch = 37, 8
  order = (grain.MapDataset.range(n)
           .shuffle(seed=input_pipeline._stream_seed(4))  # pylint: disable=protected-access
           .repeat())
  stream = input_pipeline.index_stream(4, n, batch)
  for step in range(20):
    np.testing.assert_array_equal(
        stream[step], [order[p] for p in range(step * batch,
                                               (step + 1) * batch)])


def test_a_process_computes_only_its_rows_of_each_step():
  """`index_stream(..., start, stop)` is rows start:stop of the whole batch
  (a pod host never computes the other hosts' shuffled positions)."""
  whole = input_pipeline.index_stream(2, 50, 16)
  for start, stop in [(0, 4), (4, 8), (12, 16)]:
    part = input_pipeline.index_stream(2, 50, 16, start, stop)
    for step in (0, 3, 9):  # 9: positions 144..159, epochs 2 and 3.
      np.testing.assert_array_equal(part[step], whole[step][start:stop])


# -------------------------------------------------------------- content --


def test_batch_equals_the_in_memory_corpus_at_its_record_indices(config_data):
  train_input = input_pipeline.TrainInput(config_data, "train", 32, seed=0)
  batch = train_input.batch(3)
  assert set(batch) == {"image", "tokens", "corrupt", "index"}
  assert batch["image"].dtype == np.uint8 and batch["tokens"].dtype == np.int32
  np.testing.assert_array_equal(
      batch["index"], _step_indices(0, 3, 32, N_TRAIN))
  twin = corpus.make_split(input_pipeline.corpus_config(config_data), "train")
  index = batch["index"]
  np.testing.assert_array_equal(batch["image"], twin["image"][index])
  np.testing.assert_array_equal(batch["corrupt"], twin["corrupt"][index])
  tokenizer = input_pipeline.tokenizer(config_data)
  assert tokenizer.decode(batch["tokens"]) == twin["caption"][index].tolist()
  assert len(train_input) == N_TRAIN
  assert train_input.image_shape == (32, 32, 3)


def test_corpus_tokenizer_is_sentencepiece_and_agrees_with_word_twin(
    config_data):
  """The trained model has one piece per corpus word: every caption and
  prompt maps to the word tokenizer's ids up to a fixed relabelling."""
  tokenizer = input_pipeline.tokenizer(config_data)
  assert isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer)
  assert tokenizer.vocab_size == len(corpus.vocabulary()) + 3
  words = tokenizer_lib.corpus_tokenizer()
  cfg = input_pipeline.corpus_config(config_data)
  texts = (corpus.make_split(cfg, "train")["caption"].tolist()
           + corpus.make_split(cfg, "retrieval")["caption"].tolist()
           + [t.format(name) for name in corpus.class_names()
              for t in corpus.prompt_templates()])
  pieces = tokenizer.encode(texts, 16)
  twin = words.encode(texts, 16)
  assert not np.any(pieces == tokenizer.unk_id)
  assert np.all(np.sum(pieces == tokenizer.eos_id, axis=1) == 1)
  relabel = {}
  for piece, word in zip(pieces.reshape(-1), twin.reshape(-1)):
    assert relabel.setdefault(int(piece), int(word)) == int(word)
  assert len(set(relabel.values())) == len(relabel)


def test_probe_splits_keep_labels_and_index_order(config_data):
  split = input_pipeline.load_split(config_data, "zeroshot")
  np.testing.assert_array_equal(split.arrays["index"], np.arange(48))
  np.testing.assert_array_equal(split.arrays["label"], np.arange(48) % 48)
  assert split.arrays["image"].shape == (48, 32, 32, 3)
  assert split.bad_records == 0


def test_fingerprint_follows_the_records_and_preprocessing(config_data):
  base = input_pipeline.open_records(config_data, "train").fingerprint
  same = input_pipeline.open_records(
      with_changes(config_data, n_curated=32), "train").fingerprint
  assert same == base  # The train split does not depend on n_curated.
  for change in (dict(n_train=N_TRAIN + 8), dict(max_tokens=12),
                 dict(long_captions="bad")):
    other = input_pipeline.open_records(with_changes(config_data, **change),
                                        "train")
    assert other.fingerprint != base, change


# ------------------------------------------------ resume, shards, workers --


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    if key == "reference":
      for field in selection.Embeddings._fields:
        np.testing.assert_array_equal(getattr(a[key], field),
                                      getattr(b[key], field), err_msg=field)
    else:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resumed_iteration_equals_uninterrupted_iteration(config_data):
  uninterrupted = input_pipeline.TrainInput(config_data, "train", 48, seed=1)
  reference = [uninterrupted.batch(step) for step in range(8)]  # Prefetched.
  resumed = input_pipeline.TrainInput(config_data, "train", 48, seed=1)
  for step in range(5, 8):
    _assert_batches_equal(resumed.batch(step), reference[step])
  for step, batch in zip(range(2, 8), resumed.batches(2)):
    _assert_batches_equal(batch, reference[step])
  uninterrupted.close()
  resumed.close()


def test_process_shards_are_disjoint_and_complete(config_data):
  batch_size, processes = 40, 4
  whole = input_pipeline.TrainInput(config_data, "train", batch_size, seed=2,
                                    process_index=0, process_count=1)
  shards = [input_pipeline.TrainInput(config_data, "train", batch_size,
                                      seed=2, process_index=p,
                                      process_count=processes)
            for p in range(processes)]
  seen = []
  for step in range(N_TRAIN // batch_size):  # One epoch.
    parts = [shard.batch(step) for shard in shards]
    for part in parts:
      assert len(part["index"]) == batch_size // processes
    _assert_batches_equal(
        {k: np.concatenate([p[k] for p in parts]) for k in parts[0]},
        whole.batch(step))
    seen += [part["index"] for part in parts]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)),
                                np.arange(N_TRAIN))


def test_worker_processes_give_the_same_batches(config_data, tmp_path):
  """Also with the reference rows: the opened cache travels to the workers
  by pickle."""
  cache, _, _ = _cache_for(config_data, tmp_path / "cache", "float16")
  in_process = input_pipeline.TrainInput(config_data, "train", 32, seed=0,
                                         reference=cache)
  workers = input_pipeline.TrainInput(
      with_changes(config_data, num_workers=2), "train", 32, seed=0,
      reference=cache)
  batches = workers.batches(4)
  for step in range(4, 7):
    _assert_batches_equal(next(batches), in_process.batch(step))
  batches.close()


@pytest.mark.parametrize("key,value,message", [
    ("name", "tfds", "data.tfds_name=''"),
    ("image_size", 64, "must equal config.model.image.image_size=32"),
    ("bad_records", "ignore", r"must be one of \('skip', 'error'\)"),
    ("crop", "random", r"must be one of \('center', 'none'\)"),
])
def test_config_validation_names_the_bad_data_key(key, value, message):
  config = config_lib.base_config()
  config.data[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


# ------------------------------------------------------ reference rows --


def _cache_for(config_data, path, dtype, shard_bytes=2000):
  """A cache of random embeddings for `config_data`'s train split; returns
  it opened and its rows in the stored dtype (the slow twin)."""
  records = input_pipeline.open_records(config_data, "train")
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, len(records), 8)).astype(np.float32)
  reference_cache.write(
      str(path), image, text, temperature=10.0, bias=-5.0,
      dataset_fingerprint=records.fingerprint, checkpoint_fingerprint="c",
      checkpoint_step=1, model_description={}, dtype=dtype,
      shard_bytes=shard_bytes)
  cache = reference_cache.open_cache(
      str(path), dataset_fingerprint=records.fingerprint, count=len(records))
  stored = cache.dtype
  return cache, image.astype(stored), text.astype(stored)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_carries_the_reference_rows_of_its_records(config_data,
                                                         tmp_path, dtype):
  cache, image, text = _cache_for(config_data, tmp_path / "cache", dtype)
  train_input = input_pipeline.TrainInput(config_data, "train", 48, seed=3,
                                          reference=cache)
  for step in (0, 1, 2, 9):  # Direct reads, then the prefetching iterator.
    batch = train_input.batch(step)
    ref = batch["reference"]
    assert isinstance(ref, selection.Embeddings)
    assert ref.image.dtype == image.dtype and ref.image.shape == (48, 8)
    np.testing.assert_array_equal(ref.image, image[batch["index"]])
    np.testing.assert_array_equal(ref.text, text[batch["index"]])
    assert (ref.temperature, ref.bias) == (np.float32(10), np.float32(-5))
    assert ref.temperature.dtype == np.float32
  train_input.close()


def test_reference_rows_follow_bad_record_substitution(config_data, tmp_path):
  """Long captions made bad: the replaced records' reference rows are the
  replacements', not the originals'."""
  data = with_changes(config_data, max_tokens=9, long_captions="bad")
  records = input_pipeline.open_records(data, "train")
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, len(records), 8)).astype(np.float32)
  reference_cache.write(
      str(tmp_path / "cache"), image, text, temperature=1.0, bias=0.0,
      dataset_fingerprint=records.fingerprint, checkpoint_fingerprint="c",
      checkpoint_step=1, model_description={})
  cache = reference_cache.open_cache(str(tmp_path / "cache"),
                                     dataset_fingerprint=records.fingerprint,
                                     count=len(records))
  train_input = input_pipeline.TrainInput(data, "train", 64, seed=0,
                                          reference=cache)
  batch = train_input.batch(0)
  drawn = _step_indices(0, 0, 64, N_TRAIN)
  assert train_input.bad_records > 0
  assert not np.array_equal(batch["index"], drawn)
  np.testing.assert_array_equal(batch["reference"].image,
                                image[batch["index"]])


def test_each_process_reads_only_the_reference_rows_of_its_block(
    config_data, tmp_path):
  cache, image, _ = _cache_for(config_data, tmp_path / "cache", "float32")
  requested = []

  class Recording(reference_cache.ReferenceCache):
    def read(self, indices):
      requested.append(np.array(indices))
      return super().read(indices)
  recording = Recording(cache.cache_dir, cache.manifest)
  blocks = []
  for process in range(2):
    train_input = input_pipeline.TrainInput(
        config_data, "train", 40, seed=2, reference=recording,
        process_index=process, process_count=2)
    requested.clear()
    batch = train_input.batch(4)
    np.testing.assert_array_equal(np.concatenate(requested), batch["index"])
    np.testing.assert_array_equal(batch["reference"].image,
                                  image[batch["index"]])
    blocks.append(batch["index"])
  np.testing.assert_array_equal(np.concatenate(blocks),
                                _step_indices(2, 4, 40, N_TRAIN))


def test_a_cache_of_another_size_is_refused(config_data, tmp_path):
  other = with_changes(config_data, n_train=N_TRAIN + 8)
  cache, _, _ = _cache_for(other, tmp_path / "cache", "float32")
  with pytest.raises(input_pipeline.DataError, match="holds 208 records"):
    input_pipeline.TrainInput(config_data, "train", 40, seed=0,
                              reference=cache)


def test_stored_dtype_reaches_the_device_unconverted(config_data, tmp_path):
  cache, image, _ = _cache_for(config_data, tmp_path / "cache", "bfloat16")
  batch = input_pipeline.TrainInput(config_data, "train", 32, seed=0,
                                    reference=cache).batch(0)
  mesh = sharding.make_mesh()
  rows = {k: batch[k] for k in ("image", "tokens", "corrupt")}
  _, ref = train.global_batches(rows, batch["reference"], mesh)
  assert isinstance(ref, selection.Embeddings)
  assert ref.image.dtype == ml_dtypes.bfloat16 == ref.text.dtype
  assert isinstance(ref.image, jax.Array) and ref.image.shape == (32, 8)
  np.testing.assert_array_equal(np.asarray(ref.image), image[batch["index"]])


def test_long_caption_policy_applies_to_training_data_not_the_probes(
    config_data):
  """max_tokens=9 makes every retrieval probe caption "long"."""
  strict = with_changes(config_data, max_tokens=9, long_captions="bad",
                        bad_records="error")
  split = input_pipeline.load_split(strict, "retrieval")
  assert split.bad_records == 0 and len(split) == 32
  assert np.all(split.arrays["tokens"][:, -1] != 0)  # Truncated, not bad.
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.TrainInput(strict, "train", 64, seed=0).batch(0)
  assert "needs" in str(error.value) and "max_tokens=9" in str(error.value)
  assert "\n" not in str(error.value)


def test_config_data_keys_select_and_shape_corpus_version_2():
  from jest_jax.data import corpus
  config = config_lib.base_config()
  config.data.update(dict(corpus_version=2, zipf_exponent=0.5,
                          scene_mix=(0.5, 0.2, 0.3), duplicate_rate=0.1,
                          duplicate_paraphrase=0.25, curated_balance="pool",
                          curated_missing=0.1, n_hard_negatives=3))
  cfg = input_pipeline.corpus_config(config.data)
  assert (cfg.version, cfg.zipf_exponent, cfg.scene_mix, cfg.duplicate_rate,
          cfg.duplicate_paraphrase, cfg.curated_balance, cfg.curated_missing,
          cfg.n_hard_negatives) == (2, 0.5, (0.5, 0.2, 0.3), 0.1, 0.25, "pool",
                                    0.1, 3)
  # Version 2's zero-shot classes (every concept), not version 1's 48.
  assert len(corpus.class_names(cfg)) == 96
  assert input_pipeline.corpus_config(
      config_lib.base_config().data).version == 1
