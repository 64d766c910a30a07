"""Builds the reference-embedding cache from a finished reference run.

  python -m jest_jax.cache_reference --workdir runs/reference \
      [--split train] [--output DIR] [--dtype float32|bfloat16|float16] \
      [--set data.KEY=VALUE ...] [--shard_index I --num_shards N]

The data is the reference run's own data config with `--split` and any
`--set` overrides (e.g. `--set data.name=tfds --set data.tfds_name=my_pairs`
to embed a converted folder); it must be the learner's data config, whose
fingerprint the cache records. The cache lands in `WORKDIR/embeddings/SPLIT`
unless `--output` says otherwise.

The build is resumable: records are embedded in chunks of `--chunk_size`,
each stored as soon as it is done, so an interrupted build continues where it
stopped; the cache itself appears only when complete. Shards: run the same
command with `--shard_index i --num_shards n` on n machines (or in n JAX
processes, where the defaults are the process index and count); each embeds
every n-th chunk, and whichever finishes last assembles the cache (in n JAX
processes with the default shards: process 0, once all have embedded theirs).

WORKDIR and `--output` may be `gs://...` (read and written through
`etils.epath`; the TPU VMs need `gcsfs` for that, or TensorFlow).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import flops as flops_lib
from jest_jax import input_pipeline
from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax import sharding
from jest_jax import train
from jest_jax.data import tokenizer as tokenizer_lib

DEFAULT_CHUNK_SIZE = 8192


def load_run_config(workdir):
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise train.TrainingError(f"{path} not found: {workdir} is not a jest_jax "
                              "run directory")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def data_config(config, split_name, data_overrides=None):
  """The reference run's `config.data` with `split` and `data_overrides`
  (`["data.key=value", ...]` or `{"data.key": value}`; the `data.` prefix is
  optional; values are converted to the type of the key's current value)
  applied."""
  # Defaults first: a run written before a data key existed still loads.
  config_data = config_lib.base_config().data
  config_data.update(config.data.to_dict())
  try:
    overrides = [(key.removeprefix("data."), value) for key, value in
                 config_lib.parse_overrides(data_overrides or {})]
    config_lib.apply_overrides(config_data, dict(overrides),
                               name="config.data")
  except config_lib.ConfigError as e:
    raise train.TrainingError(f"--set: {e}") from None
  config_data.split = split_name
  return config_data


def _check_params_fit(model, params, image_shape, max_tokens):
  """One clear error if the checkpoint is not a model for this data (e.g. a
  tokenizer with another vocabulary), before anything is jitted."""
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         np.zeros((1, *image_shape), np.float32),
                         np.zeros((1, max_tokens), np.int32))["params"])
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), tuple(x.shape)), tree)
  got = jax.tree.leaves(shapes(params))
  want = jax.tree.leaves(shapes(expected))
  if got != want:
    mismatch = sorted(set(want) - set(got))[:3]
    raise train.TrainingError(
        "the reference checkpoint does not fit a model for this data "
        f"(expected {mismatch} ...); embed data with the reference's own "
        "tokenizer (config.data.tokenizer) and image size")


def _embedding_flops(model, params, batch_size, image_shape, max_tokens):
  """XLA's FLOP count of embedding one example (image and text)."""
  flops = flops_lib.program_flops
  images = jax.ShapeDtypeStruct((batch_size, *image_shape), np.uint8)
  tokens = jax.ShapeDtypeStruct((batch_size, max_tokens), np.int32)
  image_flops = flops(lambda p, x: model.apply(
      {"params": p}, evaluate.preprocess_images(x), None)[0], params, images)
  text_flops = flops(lambda p, t: model.apply({"params": p}, None, t)[1],
                     params, tokens)
  return (image_flops + text_flops) / batch_size


def build_cache(workdir, split_name="train", output=None, dtype="float32", *,
                data_overrides=None, shard_index=None, num_shards=None,
                chunk_size=DEFAULT_CHUNK_SIZE, max_chunks=None,
                shard_bytes=reference_cache.DEFAULT_SHARD_BYTES):
  """Embeds `split_name` with the latest checkpoint of the run in `workdir`.

  Args:
    workdir: the reference run.
    split_name: the data split to embed.
    output: the cache directory (default `WORKDIR/embeddings/SPLIT`).
    dtype: stored dtype ("float32", "bfloat16", "float16").
    data_overrides: `["data.key=value", ...]` or `{"data.key": value}`
      applied to the run's data config.
    shard_index, num_shards: build only every `num_shards`-th chunk from
      `shard_index` (default: this JAX process's index and the count).
    chunk_size: records per chunk (unit of resumption and sharding).
    max_chunks: stop after embedding this many chunks, as a preemption would
      (for tests; the next call continues).
    shard_bytes: about how large each file of the finished cache is.
  Returns:
    `(cache_dir, manifest)`; `manifest` is None while chunks of other shards
    (or after `max_chunks`) are missing. An existing cache for the same data,
    checkpoint and dtype is kept as it is (built once).
  """
  output = output or os.path.join(workdir, "embeddings", split_name)
  config = load_run_config(workdir)
  params, step = train.restore_params(workdir)
  fingerprint = reference_cache.params_fingerprint(params)
  config_data = data_config(config, split_name, data_overrides)
  if not config_data.tokenizer:  # Embed with the ids the reference learned.
    config_data.tokenizer = tokenizer_lib.workdir_tokenizer(workdir)
  try:
    records = input_pipeline.open_records(config_data, split_name)
  except input_pipeline.DataError as e:
    raise train.TrainingError(str(e)) from None
  try:
    cached = reference_cache.open_cache(
        output, dataset_fingerprint=records.fingerprint, count=len(records),
        checkpoint_fingerprint=fingerprint)
    if cached.manifest["dtype"] == dtype:
      logging.info("reference cache %s is up to date", output)
      return output, cached.manifest
  except reference_cache.CacheError:
    pass  # Missing or stale: (re)build below.

  # Shards that are this job's JAX processes meet at a barrier and leave
  # assembling to process 0 (an object store has no lock to pick one).
  one_job = (shard_index is None and num_shards is None
             and jax.process_count() > 1)
  shard_index = jax.process_index() if shard_index is None else shard_index
  num_shards = jax.process_count() if num_shards is None else num_shards
  builder = reference_cache.CacheBuilder(
      output, count=len(records), chunk_size=chunk_size,
      identity=dict(dataset_fingerprint=records.fingerprint,
                    checkpoint_fingerprint=fingerprint, dtype=dtype),
      shard_bytes=shard_bytes)
  todo = [chunk for chunk in builder.shard(shard_index, num_shards)
          if not builder.done(*chunk)]

  t0 = time.perf_counter()
  model = train.build_model(config, records.reader.tokenizer.vocab_size)
  image_shape = (config_data.image_size, config_data.image_size, 3)
  _check_params_fit(model, params, image_shape, config_data.max_tokens)
  # Each process embeds its own chunks on its own devices.
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))
  params = jax.device_put(jax.device_get(params), sharding.replicated(mesh))
  batch_size = config.eval.batch_size
  batch_size -= batch_size % mesh.size
  encoder = evaluate.Encoder(model, mesh, max(batch_size, mesh.size))
  embedded = 0
  todo = todo[:max_chunks]
  for (start, stop), chunk in zip(todo,
                                  input_pipeline.read_ranges(records, todo)):
    builder.write_chunk(start, encoder.images(params, chunk["image"]),
                        encoder.texts(params, chunk["tokens"]))
    embedded += stop - start
  seconds = time.perf_counter() - t0
  if embedded:
    logging.info("reference cache: embedded %d examples in %.1f s (%.0f "
                 "examples/s), shard %d of %d", embedded, seconds,
                 embedded / seconds, shard_index, num_shards)
  manifest_fields = dict(
      temperature=float(np.exp(np.asarray(params["t"]).reshape(()))),
      bias=float(np.asarray(params["b"]).reshape(())),
      checkpoint_step=step, model=train.model_description(config),
      split=split_name, shards=num_shards,
      tokenizer=tokenizer_lib.manifest_entry(records.reader.tokenizer),
      build_seconds=seconds,
      build_examples_per_s=embedded / seconds if embedded else None,
      build_flops=_embedding_flops(model, params, encoder.batch_size,
                                   image_shape, config_data.max_tokens)
      * len(records))
  if one_job and max_chunks is None:
    multihost_utils.sync_global_devices("reference cache chunks written")
    if shard_index == 0:
      manifest = builder.finish(**manifest_fields)
    multihost_utils.sync_global_devices("reference cache assembled")
    if shard_index != 0:
      manifest = reference_cache.read_manifest(output)
  else:
    manifest = builder.finish(**manifest_fields)
  if manifest is None:
    logging.info("reference cache %s: %d chunks still missing", output,
                 len(builder.missing()))
  return output, manifest


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  metrics_lib.quiet_library_logs()
  if not _WORKDIR.value:
    sys.exit("error: --workdir (the reference run's directory) is required")
  try:
    output, manifest = build_cache(
        _WORKDIR.value, _SPLIT.value, _OUTPUT.value, _DTYPE.value,
        data_overrides=_SET.value, shard_index=_SHARD_INDEX.value,
        num_shards=_NUM_SHARDS.value, chunk_size=_CHUNK_SIZE.value)
  except (train.TrainingError, reference_cache.CacheError,
          input_pipeline.DataError) as e:
    sys.exit(f"error: {e}")
  if manifest is None:
    print(f"shard done; {output} is assembled when every shard has run")
  else:
    print(f"reference embeddings written to {output} ({manifest['count']} "
          f"examples, {manifest['dtype']})")


def _define_flags():
  """CLI flags, defined only when this module is the program (other
  programs import its functions)."""
  global _WORKDIR, _SPLIT, _OUTPUT, _DTYPE, _SET, _SHARD_INDEX, _NUM_SHARDS
  global _CHUNK_SIZE
  _WORKDIR = flags.DEFINE_string("workdir", None,
                                 "The reference run's workdir.")
  _SPLIT = flags.DEFINE_string("split", "train", "Split to embed.")
  _OUTPUT = flags.DEFINE_string(
      "output", None, "Cache directory (default WORKDIR/embeddings/SPLIT).")
  _DTYPE = flags.DEFINE_enum("dtype", "float32",
                             ["float32", "bfloat16", "float16"],
                             "Stored dtype of the embeddings.")
  _SET = flags.DEFINE_multi_string(
      "set", [], "Data config override, data.key=value (e.g. "
      "data.tfds_name=my_pairs); may repeat.")
  _SHARD_INDEX = flags.DEFINE_integer(
      "shard_index", None, "This shard (default: the JAX process index).")
  _NUM_SHARDS = flags.DEFINE_integer(
      "num_shards", None, "Number of shards (default: JAX process count).")
  _CHUNK_SIZE = flags.DEFINE_integer(
      "chunk_size", DEFAULT_CHUNK_SIZE,
      "Records per chunk, the unit of resumption and sharding.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
