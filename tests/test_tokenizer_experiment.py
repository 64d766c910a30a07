"""One tokenizer per experiment: the workdir copy, the cache manifest's
record of it, the refusal of a learner with another one, and a tokenizer
trained once on several captions files."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from jest_jax import reference_cache
from jest_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(tmp_path, name, words):
  return tokenizer_lib.train_sentencepiece(
      words, str(tmp_path / f"{name}.model"), vocab_size=40,
      model_type="word")


def write_manifest(cache_dir, tokenizer):
  os.makedirs(cache_dir)
  with open(os.path.join(cache_dir, reference_cache.MANIFEST), "w") as f:
    json.dump({"count": 1,
               "tokenizer": tokenizer_lib.manifest_entry(tokenizer)}, f)


def test_learner_with_another_tokenizer_than_the_cache_is_refused(tmp_path):
  ours = train(tmp_path, "reference", ["a red square", "a blue circle"])
  # The same vocabulary size, other ids: only the fingerprint tells.
  theirs = train(tmp_path, "pool", ["a blue square", "a red circle",
                                    "a blue circle"])
  assert theirs.vocab_size == ours.vocab_size
  cache_dir = str(tmp_path / "cache")
  write_manifest(cache_dir, ours)
  tokenizer_lib.check_cache_tokenizer(cache_dir, ours)  # The same: passes.
  with pytest.raises(tokenizer_lib.TokenizerMismatch) as error:
    tokenizer_lib.check_cache_tokenizer(cache_dir, theirs)
  message = str(error.value)
  assert "\n" not in message
  assert ours.path in message and theirs.path in message
  assert f"config.data.tokenizer={ours.path}" in message


def test_workdir_keeps_its_tokenizer_and_learners_take_it(tmp_path):
  ours = train(tmp_path, "reference", ["a red square", "a blue circle"])
  workdir = str(tmp_path / "reference_run")
  os.makedirs(workdir)
  copy = tokenizer_lib.record_in_workdir(workdir, ours)
  assert tokenizer_lib.SentencePieceTokenizer.load(copy).fingerprint == (
      ours.fingerprint)
  tokenizer_lib.record_in_workdir(workdir, ours)  # A resume: no change.
  other = train(tmp_path, "other", ["green things only"])
  with pytest.raises(tokenizer_lib.TokenizerMismatch, match="fingerprint"):
    tokenizer_lib.record_in_workdir(workdir, other)
  config = ml_collections.ConfigDict(
      {"reference": {"workdir": workdir, "cache_dir": ""}})
  assert tokenizer_lib.reference_tokenizer(config) == copy
  # Without the workdir, the file the cache's manifest names.
  cache_dir = str(tmp_path / "cache")
  write_manifest(cache_dir, ours)
  config.reference.update(workdir="", cache_dir=cache_dir)
  assert tokenizer_lib.reference_tokenizer(config) == ours.path


def test_cli_trains_one_tokenizer_on_several_captions_files(tmp_path):
  for name, caption in (("curated", "a red square"),
                        ("pool", "zebra stripes galore")):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      f.write(json.dumps({"image": "x.png", "caption": caption}) + "\n")
  output = str(tmp_path / "shared.model")
  result = subprocess.run(
      [sys.executable, "-m", "jest_jax.data.tokenizer", "--captions",
       str(tmp_path / "curated.jsonl"), "--captions",
       str(tmp_path / "pool.jsonl"), "--output", output, "--model_type",
       "word", "--vocab_size", "20"], cwd=ROOT, capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  shared = tokenizer_lib.SentencePieceTokenizer.load(output)
  tokens = shared.encode(["red zebra galore"], 5)[0]
  assert shared.unk_id not in tokens.tolist()
  assert shared.decode(tokens) == ["red zebra galore"]
