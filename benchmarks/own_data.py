"""Own-data throughput: WebDataset shard conversion and retrieval evaluation.

  python benchmarks/own_data.py [--shards 8] [--per_shard 250] \
      [--pairs 10000] [--out benchmarks/results]

Measures:
  1. `convert_shards` on synthetic shards of 96x128 JPEGs (resized to 64 px
     at conversion): examples/s of the per-shard phase with 1 and 2 worker
     processes, and of the whole conversion (with assembly into ArrayRecord);
  2. retrieval R@1/5/10 for `--pairs` image-caption pairs: the blockwise
     ranking of `evaluate.recall_at_k` on 64-d embeddings (both directions),
     and the whole retrieval evaluator (embedding with a pico two-tower model
     at 32 px, batch 512, plus the ranking), on the CPU.
Rates are the best of `--repeats` runs (the machine may be shared). Writes
`own_data.json`.
"""

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jest_jax import config_lib  # pylint: disable=wrong-import-position
from jest_jax import evaluate  # pylint: disable=wrong-import-position
from jest_jax import sharding  # pylint: disable=wrong-import-position
from jest_jax import train  # pylint: disable=wrong-import-position
from jest_jax.data import convert_shards  # pylint: disable=wrong-import-position
from jest_jax.data import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position


def make_shards(root, shards, per_shard):
  rng = np.random.default_rng(0)
  for s in range(shards):
    with tarfile.open(os.path.join(root, f"{s:06d}.tar"), "w") as tar:
      for i in range(per_shard):
        pixels = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        key = f"{s:06d}{i:04d}"
        for extension, data in (
            ("jpg", buffer.getvalue()),
            ("txt", f"a photo of thing {i % 17}".encode()),
            ("json", json.dumps({"clip_score": i / per_shard}).encode())):
          info = tarfile.TarInfo(f"{key}.{extension}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return os.path.join(root, "{000000.." + f"{shards - 1:06d}" + "}.tar")


def best_of(repeats, fn):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def bench_shards(args, root):
  pattern = make_shards(root, args.shards, args.per_shard)
  n = args.shards * args.per_shard
  out = {"examples": n, "shards": args.shards}
  for workers in (1, 2):
    data_dir = os.path.join(root, f"tfds{workers}")

    def phase1(data_dir=data_dir, workers=workers):
      shutil.rmtree(data_dir, ignore_errors=True)
      convert_shards.convert(pattern, "web", data_dir, workers=workers,
                             image_size=64, json_fields=["clip_score"],
                             stop_after_shards=args.shards)

    def whole(data_dir=data_dir, workers=workers):
      shutil.rmtree(data_dir, ignore_errors=True)
      convert_shards.convert(pattern, "web", data_dir, workers=workers,
                             image_size=64, json_fields=["clip_score"])
    out[f"shards_examples_per_s_{workers}_proc"] = n / best_of(args.repeats,
                                                               phase1)
    out[f"whole_examples_per_s_{workers}_proc"] = n / best_of(args.repeats,
                                                              whole)
  return out


def bench_retrieval(args, root):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(args.pairs, 64)).astype(np.float32)
  text = (image + rng.normal(size=image.shape)).astype(np.float32)
  out = {"pairs": args.pairs}
  out["ranking_seconds"] = best_of(
      args.repeats, lambda: evaluate.recall_at_k(image, text))

  config = config_lib.base_config()
  tok = tokenizer_lib.train_sentencepiece(
      [f"a photo of thing {i}" for i in range(50)],
      os.path.join(root, "spm.model"), vocab_size=64, model_type="word")
  model = train.build_model(config, tok.vocab_size)
  params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                      np.zeros((1, config.data.max_tokens), np.int32))[
                          "params"]
  encoder = evaluate.Encoder(model, sharding.make_mesh(1),
                             config.eval.batch_size)
  images = rng.integers(0, 256, (args.pairs, 32, 32, 3), dtype=np.uint8)
  tokens = tok.encode([f"a photo of thing {i % 50}" for i in range(
      args.pairs)], config.data.max_tokens)
  encoder.images(params, images[:1])  # Compile.
  encoder.texts(params, tokens[:1])

  def whole():
    evaluate.recall_at_k(evaluate._normalize(encoder.images(params, images)),  # pylint: disable=protected-access
                         evaluate._normalize(encoder.texts(params, tokens)))  # pylint: disable=protected-access
  out["evaluator_seconds"] = best_of(args.repeats, whole)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shards", type=int, default=8)
  parser.add_argument("--per_shard", type=int, default=250)
  parser.add_argument("--pairs", type=int, default=10_000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="own_data_bench")
  try:
    results = {"shards": bench_shards(args, root),
               "retrieval": bench_retrieval(args, root),
               "settings": vars(args), "machine": common.machine()}
  finally:
    shutil.rmtree(root, ignore_errors=True)
  s, r = results["shards"], results["retrieval"]
  print("| measure | 1 process | 2 processes |")
  print("|---|---|---|")
  for key, label in (("shards", "shard phase, examples/s"),
                     ("whole", "whole conversion, examples/s")):
    print(f"| {label} | {s[f'{key}_examples_per_s_1_proc']:.0f} | "
          f"{s[f'{key}_examples_per_s_2_proc']:.0f} |")
  print(f"retrieval, {r['pairs']} pairs: ranking {r['ranking_seconds']:.2f} s,"
        f" whole evaluator (pico, 32 px) {r['evaluator_seconds']:.2f} s")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "own_data.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  main()
