"""`build_cache` on a reference run: resumable, shardable, and equal to
running the reference model directly (un-jitted, one call) on the split."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from jest_jax import cache_reference
from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax import reference_cache
from jest_jax import train

N_TRAIN = 250


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """A run directory as the trainer leaves it: config.json and an orbax
  checkpoint whose state holds the (randomly initialised) params."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = config_lib.base_config()
  config.method = "reference"
  config.data.split = "curated"
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.update(dict(n_train=N_TRAIN, n_curated=64, n_retrieval=16,
                          n_zeroshot=48))
  config.eval.batch_size = 32
  vocab_size = input_pipeline.tokenizer(config.data).vocab_size
  model = train.build_model(config, vocab_size)
  params = jax.jit(model.init)(
      jax.random.key(3), np.zeros((1, 32, 32, 3), np.float32),
      np.zeros((1, 16), np.int32))["params"]
  train.write_params_as_run(workdir, config, params, step=7)
  return workdir, config, model, params


def direct_embeddings(reference_run):
  _, config, model, params = reference_run
  data = cache_reference.data_config(config, "train")
  split = input_pipeline.load_split(data, "train")
  zimg, ztxt, _ = model.apply(
      {"params": params}, evaluate.preprocess_images(split.arrays["image"]),
      split.arrays["tokens"])
  return np.asarray(zimg), np.asarray(ztxt), split.fingerprint


def test_interrupted_build_resumes_and_equals_direct_inference(
    reference_run, tmp_path):
  workdir = reference_run[0]
  output = str(tmp_path / "cache")
  _, manifest = cache_reference.build_cache(workdir, output=output,
                                            chunk_size=100, max_chunks=1)
  assert manifest is None and not os.path.exists(output)  # "Preempted".
  _, manifest = cache_reference.build_cache(workdir, output=output,
                                            chunk_size=100)
  image, text, fingerprint = direct_embeddings(reference_run)
  assert manifest["count"] == N_TRAIN and manifest["chunks"] == 3
  assert manifest["checkpoint_step"] == 7 and manifest["build_flops"] > 0
  cache = reference_cache.open_cache(output, dataset_fingerprint=fingerprint,
                                     count=N_TRAIN)
  rows = cache.read(np.arange(N_TRAIN))
  np.testing.assert_allclose(rows.image, image, atol=1e-5)
  np.testing.assert_allclose(rows.text, text, atol=1e-5)
  params = reference_run[3]
  assert cache.temperature == pytest.approx(float(np.exp(params["t"][0])))
  assert cache.bias == pytest.approx(float(params["b"][0]))


def test_sharded_build_equals_one_process_build(reference_run, tmp_path):
  workdir = reference_run[0]
  whole = str(tmp_path / "whole")
  sharded = str(tmp_path / "sharded")
  cache_reference.build_cache(workdir, output=whole, chunk_size=64,
                              shard_bytes=4096)
  results = [cache_reference.build_cache(workdir, output=sharded,
                                         chunk_size=64, shard_index=i,
                                         num_shards=3, shard_bytes=4096)[1]
             for i in range(3)]
  assert results[0] is None and results[1] is None
  assert results[2]["shards"] == 3
  shards = [f for f in sorted(os.listdir(whole)) if f.endswith(".npy")]
  assert len(shards) > 3  # Chunks of 64 records span shard files.
  assert shards == sorted(f for f in os.listdir(sharded) if f.endswith(".npy"))
  for name in shards:
    np.testing.assert_array_equal(np.load(os.path.join(whole, name)),
                                  np.load(os.path.join(sharded, name)))


def test_bfloat16_cache_matches_float32_cache(reference_run, tmp_path):
  workdir = reference_run[0]
  cache_reference.build_cache(workdir, output=str(tmp_path / "f32"))
  cache_reference.build_cache(workdir, output=str(tmp_path / "bf16"),
                              dtype="bfloat16")
  with open(tmp_path / "bf16" / "manifest.json") as f:
    manifest = json.load(f)
  load = lambda name: reference_cache.open_cache(
      str(tmp_path / name), dataset_fingerprint=manifest[
          "dataset_fingerprint"], count=N_TRAIN).read(np.arange(N_TRAIN))
  assert manifest["dtype"] == "bfloat16"
  assert load("bf16").image.dtype == ml_dtypes.bfloat16
  np.testing.assert_allclose(load("bf16").image.astype(np.float32),
                             load("f32").image, atol=1e-2)


def test_data_the_checkpoint_cannot_embed_is_one_clear_error(reference_run,
                                                            tmp_path):
  workdir = reference_run[0]
  from jest_jax.data import tokenizer as tokenizer_lib
  other = str(tmp_path / "other.model")
  tokenizer_lib.train_sentencepiece(["a b c d e f g"], other, vocab_size=20,
                                    model_type="char")
  with pytest.raises(train.TrainingError, match="does not fit a model for "
                     "this data.*config.data.tokenizer"):
    cache_reference.build_cache(workdir, output=str(tmp_path / "cache"),
                                data_overrides={"data.tokenizer": other})
  with pytest.raises(train.TrainingError, match="no such config.data key"):
    cache_reference.build_cache(workdir, data_overrides={"data.nope": "1"})
