"""The built-in corpus as a TFDS dataset in ArrayRecord files.

Generated locally on first use (never downloaded) from a `CorpusConfig` into

  DATA_DIR/jest_builtin/KEY/jest_builtin_corpus/VERSION/

(KEY names the config, the generator version included, so version-1 and
version-2 data never share a directory), with splits train / curated / retrieval / zeroshot
(empty splits are left out). Features: `image` (uint8 32×32×3, raw bytes),
`caption`, `corrupt` (the ground-truth flag), `corruption` (0 clean,
1 mismatch, 2 uninformative, 3 attribute), `label` (colour * 6 + shape of the
first object) and `index`. Records are stored in index order (no TFDS
shuffling), so a record's position in a split is its `index`.

The SentencePiece model beside the records (`spm.model`) is the corpus's
tokenizer: a word-level model trained once on corpus captions, prompts and
words from a fixed sample (seed 0), so every corpus config of one generator
version shares it and every caption fits `CorpusConfig.max_tokens` uncut.
Version 2 has its own (its vocabulary adds counts and plurals); version 1's
is the one it has always been. Version 2's hard negatives are not stored:
`corpus.make_split(config, "retrieval")["hard_negatives"]` gives them, in
the stored records' index order.
"""

import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from jest_jax.data import corpus
from jest_jax.data import corpus_v2
from jest_jax.data import storage
from jest_jax.data import tokenizer as tokenizer_lib

BUILDER_NAME = "jest_builtin_corpus"
# The TFDS version of the stored features (the same for both generator
# versions; `config_key` separates their data).
VERSION = f"{corpus.GENERATOR_VERSION}.0.0"
# One word per piece: the corpus's vocabulary is closed and small (58 words
# in version 1, 68 in version 2), per generator version.
TOKENIZER_VOCAB_SIZE = {1: 64, 2: 80}
_TOKENIZER_SAMPLE = corpus.CorpusConfig(seed=0, n_train=4096, n_curated=4096,
                                        n_retrieval=1024, n_zeroshot=0)


class JestBuiltinCorpus(tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
  """The built-in procedural image–caption corpus (see `corpus`)."""

  VERSION = tfds.core.Version(VERSION)
  # TFDS looks for download checksums beside a builder's source file; this
  # one downloads nothing (and the look-up needs a package TFDS lacks).
  code_path = None

  def __init__(self, *, corpus_config, **kwargs):
    # TFDS reads `info` inside its constructor.
    self._corpus_config = corpus_config
    super().__init__(**kwargs)

  def _info(self):
    size = self._corpus_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description="jest_jax's procedural image-caption corpus, " + json.dumps(
            _config_fields(self._corpus_config), sort_keys=True),
        features=tfds.features.FeaturesDict({
            # Raw pixels: the corpus's small noisy images barely compress,
            # and decoding PNG would be half the loader's time.
            "image": tfds.features.Tensor(
                shape=(size, size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "caption": tfds.features.Text(),
            "corrupt": tfds.features.Scalar(np.bool_),
            "corruption": tfds.features.Scalar(np.int32),
            "label": tfds.features.Scalar(np.int32),
            "index": tfds.features.Scalar(np.int64),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    sizes = {"train": self._corpus_config.n_train,
             "curated": self._corpus_config.n_curated,
             "retrieval": self._corpus_config.n_retrieval,
             "zeroshot": self._corpus_config.n_zeroshot}
    return {split: self._generate_examples(split) for split in corpus.SPLITS
            if sizes[split]}

  def _generate_examples(self, split):
    records = corpus.make_split(self._corpus_config, split)
    captions = records["caption"].tolist()
    for i in range(len(captions)):
      yield i, {
          "image": records["image"][i],
          "caption": captions[i],
          "corrupt": bool(records["corrupt"][i]),
          "corruption": int(records["corruption"][i]),
          "label": int(records["label"][i]),
          "index": i,
      }


# Bump when the stored features change (e.g. how images are encoded), so a
# data dir written by an older jest_jax is not read as if it were current.
RECORD_FORMAT = 1


def _config_fields(config):
  fields = {"version": corpus.GENERATOR_VERSION, "format": RECORD_FORMAT,
            "seed": config.seed,
            "image_size": config.image_size, "grid_cell": config.grid_cell,
            "n_train": config.n_train, "n_curated": config.n_curated,
            "n_retrieval": config.n_retrieval,
            "n_zeroshot": config.n_zeroshot,
            "noise_rate": float(config.noise_rate),
            "noise_mix": [float(share) for share in config.noise_mix]}
  if config.version != 1:
    # Version 1's fields stay as they were: its data dirs keep their keys.
    for split in corpus.SPLITS:
      fields.update(corpus_v2.fingerprint_fields(config, split))
  return fields


def config_key(config):
  """Short hex id of everything that changes the generated records."""
  text = json.dumps(_config_fields(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenizer_path(data_dir, version=1):
  """Where the tokenizer of corpus generator `version` is kept."""
  name = (f"tokenizer-v{corpus.GENERATOR_VERSION}.model" if version == 1
          else f"tokenizer-corpus-v{version}-{corpus_v2.GENERATOR_VERSION}"
          ".model")
  return os.path.join(storage.resolve_data_dir(data_dir), "jest_builtin",
                      name)


def tokenizer(data_dir="", version=1):
  """The SentencePiece tokenizer of corpus generator `version` (1 or 2,
  `CorpusConfig.version`), trained on first use."""
  path = tokenizer_path(data_dir, version)
  if not os.path.exists(path):
    with storage.file_lock(path + ".lock"):
      if not os.path.exists(path):
        tokenizer_lib.train_sentencepiece(
            _tokenizer_texts(version), path,
            vocab_size=TOKENIZER_VOCAB_SIZE[version], model_type="word")
  return tokenizer_lib.SentencePieceTokenizer.load(path)


def _tokenizer_texts(version=1):
  """Captions of a fixed corpus sample, the zero-shot prompts, and every
  vocabulary word once (so rare words get a piece)."""
  sample = dataclasses.replace(_TOKENIZER_SAMPLE, version=version)
  texts = list(corpus.vocabulary(sample))
  for split in ("train", "curated", "retrieval"):
    texts += corpus.make_split(sample, split)["caption"].tolist()
  texts += [template.format(name) for name in corpus.class_names(sample)
            for template in corpus.prompt_templates(sample)]
  return texts


def prepare(corpus_config, data_dir=""):
  """Writes the corpus for `corpus_config` (once); returns
  `(name, builder_data_dir)` to read it with `tfds.data_source`."""
  root = os.path.join(storage.resolve_data_dir(data_dir), "jest_builtin",
                      config_key(corpus_config))
  builder = JestBuiltinCorpus(corpus_config=corpus_config, data_dir=root)

  def write_tokenizer(dataset_dir):
    shutil.copyfile(tokenizer_path(data_dir, corpus_config.version),
                    os.path.join(dataset_dir, storage.TOKENIZER_FILE + ".tmp"))
    os.replace(os.path.join(dataset_dir, storage.TOKENIZER_FILE + ".tmp"),
               os.path.join(dataset_dir, storage.TOKENIZER_FILE))

  # Trained (once) before the dataset that stores it.
  tokenizer(data_dir, corpus_config.version)
  storage.prepare(builder, write_extras=write_tokenizer)
  return BUILDER_NAME, root
