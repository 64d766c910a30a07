"""The demo driver on a user's data end to end: two converted folders (a
clean curated set, a noisy labelled pool with a held-out split, each with
its own tokenizer), reference -> cache -> IID vs JEST, evaluated on the
pool's held-out split with one tokenizer throughout."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from jest_jax import demo
from jest_jax import input_pipeline
from jest_jax import reference_cache
from jest_jax.data import convert_folder
from jest_jax.data import tokenizer as tokenizer_lib

TINY = ("batch_size=16", "selection.n_chunks=4", "eval.batch_size=32",
        "log_every=1", "optim.warmup_steps=1", "data.image_size=32")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50),
           "blue": (40, 70, 235), "yellow": (240, 225, 25)}


@pytest.fixture(autouse=True)
def _restore_active_tokenizer():
  yield
  input_pipeline._active_tokenizer = None  # pylint: disable=protected-access


def make_folder(root, n, noisy):
  rng = np.random.default_rng(len(root))
  rows = []
  for i in range(n):
    name, colour = list(COLOURS.items())[i % 4]
    pixels = np.full((40, 40, 3), 128, np.uint8)
    top, left = rng.integers(0, 20, 2)
    pixels[top:top + 20, left:left + 20] = colour
    Image.fromarray(pixels).save(os.path.join(root, f"{i}.jpg"))
    caption = f"a {name} square"
    if noisy and i % 2:
      caption = "an unrelated holiday picture"
    rows.append({"image": f"{i}.jpg", "caption": caption, "label": name})
  with open(os.path.join(root, "captions.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return os.path.join(root, "captions.jsonl")


def test_demo_on_user_data_runs_every_stage_on_it(tmp_path):
  data_dir = str(tmp_path / "tfds")
  for name, n, noisy, holdout in (("curated", 32, False, 0.0),
                                  ("pool", 64, True, 0.25)):
    root = str(tmp_path / name)
    os.makedirs(root)
    captions = make_folder(root, n, noisy)
    convert_folder.convert(root, {"train": captions}, f"my_{name}", data_dir,
                           vocab_size=40, model_type="word", holdout=holdout)
  workdir = str(tmp_path / "demo")
  summary = demo.run_demo(workdir, steps=2, reference_steps=2,
                          filter_ratio=0.5, seed=0, eval_every=2,
                          overrides=TINY, pool="my_pool",
                          curated="my_curated:train", data_dir=data_dir)
  reference_tokenizer = tokenizer_lib.SentencePieceTokenizer.load(
      os.path.join(workdir, "reference", tokenizer_lib.WORKDIR_FILE))
  manifest = reference_cache.read_manifest(summary["reference_cache"]["dir"])
  assert manifest["tokenizer"]["fingerprint"] == (
      reference_tokenizer.fingerprint)
  pool_train = sum(convert_folder.holdout_share(f"{i}.jpg") >= 0.25
                   for i in range(64))
  assert summary["reference_cache"]["count"] == pool_train
  for run in ("iid", "clip_score", "jest"):
    with open(os.path.join(workdir, run, "config.json")) as f:
      config = json.load(f)
    assert config["data"]["tfds_name"] == "my_pool"
    assert tokenizer_lib.SentencePieceTokenizer.load(
        os.path.join(workdir, run, tokenizer_lib.WORKDIR_FILE)).fingerprint \
        == reference_tokenizer.fingerprint
    for key in ("eval/zeroshot/top1", "eval/retrieval/i2t_r1",
                "eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1"):
      assert 0.0 <= summary[run][key] <= 1.0
  # The reference is evaluated where the learners are (the pool's held-out
  # split), not on the built-in probes, so its row compares with theirs.
  with open(os.path.join(workdir, "reference", "config.json")) as f:
    reference_evals = json.load(f)["evals"]
  for name in ("zeroshot", "retrieval"):
    assert reference_evals[name]["data"]["tfds_name"] == "my_pool"
  assert 0.0 <= summary["reference"]["eval/retrieval/i2t_r1"] <= 1.0
  table = demo.format_table(summary, corrupt_known=False)
  assert "| jest | 2 |" in table and "| clip_score | 2 |" in table
  # The folders mark no corrupted pairs: the column says so, not 0.
  assert "n/a" in table.splitlines()[-1]
  assert os.path.exists(os.path.join(workdir, "curves.png"))
