"""Builds the reference-embedding cache from a finished reference run.

  python -m jest_jax.cache_reference --workdir runs/reference \
      [--split train] [--output DIR] [--dtype float32|bfloat16|float16]

The data split is the reference run's own data config with `--split`; the
cache lands in `WORKDIR/embeddings/SPLIT` unless `--output` says otherwise.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax import sharding
from jest_jax import train



def load_run_config(workdir):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise train.TrainingError(f"{path} not found: {workdir} is not a jest_jax "
                              "run directory")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def build_cache(workdir, split_name="train", output=None, dtype="float32"):
  """Embeds `split_name` with the latest checkpoint of the run in `workdir`.

  Returns `(cache_dir, manifest)`; an existing cache for the same data and
  checkpoint is kept as it is (built once).
  """
  output = output or os.path.join(workdir, "embeddings", split_name)
  config = load_run_config(workdir)
  params, step = train.restore_params(workdir)
  fingerprint = reference_cache.params_fingerprint(params)
  split = input_pipeline.load_split(config.data, split_name)
  try:
    cached = reference_cache.load(
        output, dataset_fingerprint=split.fingerprint, count=len(split),
        checkpoint_fingerprint=fingerprint)
    if cached.manifest["dtype"] == dtype:
      logging.info("reference cache %s is up to date", output)
      return output, cached.manifest
  except reference_cache.CacheError:
    pass  # Missing or stale: (re)build below.

  t0 = time.perf_counter()
  model = train.build_model(config, input_pipeline.tokenizer().vocab_size)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  encoder = evaluate.Encoder(model, mesh, config.eval.batch_size)
  image_emb = encoder.images(params, split.arrays["image"])
  text_emb = encoder.texts(params, split.arrays["tokens"])
  temperature = float(np.exp(np.asarray(params["t"]).reshape(())))
  bias = float(np.asarray(params["b"]).reshape(()))
  manifest = reference_cache.write(
      output, image_emb, text_emb, temperature=temperature, bias=bias,
      dataset_fingerprint=split.fingerprint, checkpoint_fingerprint=fingerprint,
      checkpoint_step=step, model_description=train.model_description(config),
      dtype=dtype)
  seconds = time.perf_counter() - t0
  logging.info("reference cache: %d examples in %.1f s (%.0f examples/s) -> %s",
               len(split), seconds, len(split) / seconds, output)
  manifest["build_seconds"] = seconds
  return output, manifest


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  if not _WORKDIR.value:
    sys.exit("error: --workdir (the reference run's directory) is required")
  try:
    output, _ = build_cache(_WORKDIR.value, _SPLIT.value, _OUTPUT.value,
                            _DTYPE.value)
  except (train.TrainingError, reference_cache.CacheError) as e:
    sys.exit(f"error: {e}")
  print(f"reference embeddings written to {output}")


def _define_flags():
  """CLI flags, defined only when this module is the program (other
  programs import its functions)."""
  global _WORKDIR, _SPLIT, _OUTPUT, _DTYPE
  _WORKDIR = flags.DEFINE_string("workdir", None, "The reference run's workdir.")
  _SPLIT = flags.DEFINE_string("split", "train", "Split to embed.")
  _OUTPUT = flags.DEFINE_string("output", None,
                                "Cache directory (default WORKDIR/embeddings/SPLIT).")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                             "Stored dtype of the embeddings.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
