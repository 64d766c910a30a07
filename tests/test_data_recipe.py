"""The README's recipe for one's own data, end to end through the real CLIs
on a tiny folder made here: convert the folder, (train a reference on its
clean split,) cache the reference's embeddings, train JEST on it."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax.data import convert_folder
from jest_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50),
           "blue": (40, 70, 235), "yellow": (240, 225, 25)}
SMALL = ["--config.batch_size=16", "--config.selection.n_chunks=4",
         "--config.eval.batch_size=32", "--config.data.n_retrieval=32",
         "--config.data.n_zeroshot=48", "--config.log_every=1",
         "--config.eval_every=2", "--config.checkpoint_every=2",
         "--config.optim.warmup_steps=1"]


def run_cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def make_folder(root):
  """48 JPEGs of a coloured square on grey, labelled by colour, in two
  captions files (train, and a clean curated split for the reference)."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(48):
    name, colour = list(COLOURS.items())[i % 4]
    pixels = np.full((40, 48, 3), 128, np.uint8)
    top, left = rng.integers(0, 20), rng.integers(0, 28)
    pixels[top:top + 20, left:left + 20] = colour
    Image.fromarray(pixels).save(os.path.join(root, f"{i}.jpg"))
    rows.append({"image": f"{i}.jpg", "caption": f"a {name} square",
                 "label": name})
  for split, split_rows in (("train", rows), ("curated", rows[:32])):
    with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
      for row in split_rows:
        f.write(json.dumps(row) + "\n")


def test_convert_cache_train_recipe_runs_end_to_end(tmp_path):
  folder, data_dir = tmp_path / "my_pairs", str(tmp_path / "tfds")
  os.makedirs(folder)
  make_folder(str(folder))
  data = ["--config.data.name=tfds", "--config.data.tfds_name=my_pairs",
          f"--config.data.data_dir={data_dir}"]

  # 1. Convert the folder.
  result = run_cli("jest_jax.data.convert_folder", "--images", str(folder),
                   "--captions", str(folder / "train.jsonl"),
                   "--captions", f"curated={folder / 'curated.jsonl'}",
                   "--name", "my_pairs", "--data_dir", data_dir,
                   "--holdout", "0.25")
  held_out = sum(convert_folder.holdout_share(f"{i}.jpg") < 0.25
                 for i in range(48))
  assert f"train: {48 - held_out} kept, 0 skipped" in result.stdout
  assert f"validation: {held_out} kept" in result.stdout
  # (A reference model: here trained for 2 steps on the curated split.)
  reference = str(tmp_path / "reference")
  run_cli("jest_jax.main", "--config", "configs/reference.py:steps=2", *data,
          *SMALL, "--workdir", reference)
  # 2. Cache its embeddings of the training split.
  result = run_cli("jest_jax.cache_reference", "--workdir", reference,
                   "--split", "train")
  cache_dir = os.path.join(reference, "embeddings", "train")
  assert f"{48 - held_out} examples" in result.stdout
  # The reference kept its tokenizer; the cache records it.
  copy = tokenizer_lib.SentencePieceTokenizer.load(
      os.path.join(reference, tokenizer_lib.WORKDIR_FILE))
  assert reference_cache.read_manifest(cache_dir)["tokenizer"] == {
      "fingerprint": copy.fingerprint,
      "file": os.path.join(reference, tokenizer_lib.WORKDIR_FILE)}
  # 3. Train JEST on the folder with them.
  learner = str(tmp_path / "jest")
  result = run_cli(
      "jest_jax.main", "--config",
      "configs/jest.py:method=jest,filter_ratio=0.5,steps=2", *data, *SMALL,
      f"--config.reference.cache_dir={cache_dir}",
      f"--config.reference.workdir={reference}", "--workdir", learner)
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["step"] == 2
  rows = metrics_lib.read_metrics(learner)
  assert rows[-1]["examples_scored"] == 2 * rows[-1]["examples_seen"]
  assert np.isfinite(rows[-1]["train/loss"]) and "select/score" in rows[-1]
  # Evaluated on the held-out split of this data, by the colour labels.
  log = result.stderr + open(os.path.join(learner, "train.log")).read()
  assert "eval retrieval (retrieval, every 2 steps) on my_pairs:validation" in (
      log)
  assert "eval zeroshot (zeroshot, every 2 steps) on my_pairs:validation" in (
      log)
  assert "built-in corpus's probes" not in log
  for key in ("eval/zeroshot/top1", "eval/zeroshot/top5",
              "eval/retrieval/i2t_r10", "eval/retrieval/t2i_r5",
              "eval/zeroshot_top1", "eval/i2t_r1"):
    assert 0.0 <= summary[key] <= 1.0, key
