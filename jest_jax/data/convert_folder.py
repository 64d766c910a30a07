"""Converts a folder of images plus a captions file into a TFDS dataset
(ArrayRecord files) that the pipeline reads like any other.

  python -m jest_jax.data.convert_folder --images my_pairs/ \
      --captions my_pairs/captions.jsonl --name my_pairs [--data_dir DIR]

Captions files: JSON lines (`{"image": "cat.jpg", "caption": "a cat"}`) or
CSV with a header row naming `image` and `caption` columns; image paths are
relative to `--images` (or absolute). `--captions` may repeat as
`SPLIT=FILE` (a bare FILE is the train split), e.g. a clean `curated` split
for a reference model. An optional `label` column (a class name, or an
integer) makes a `label` ClassLabel feature, so the data can be a zero-shot
evaluation; the class names are stored with the features (integers: "0",
"1", ...).

Held-out split. `--holdout=0.1` moves about a tenth of the train rows into a
`validation` split: a row goes there when a hash of its key (the image path
as written in the captions file) falls below the share, so the same rows are
held out on every run and whatever order the file is in, and no row is in
both splits. Evaluators read it by default (`jest_jax/evaluate.py`).

Every row is checked once here: a missing or undecodable image, or a missing
or empty caption, is skipped (counted, listed in `conversion.json` and
printed) or, with `--bad_records=error`, stops the conversion with one line
naming the file and row. Kept images are stored as their original bytes
(JPEG, PNG, ...), in captions-file order (record index = kept row number);
resizing happens when the data is read (`config.data.image_size`).

The tokenizer stored with the data (`spm.model`) is `--tokenizer` (a
SentencePiece `.model`, e.g. the one a reference checkpoint was trained with)
or else a model trained here on the train split's captions.

Train on it with `--config.data.name=tfds --config.data.tfds_name=NAME`
(and `--config.data.data_dir=DIR` if not the default).
"""

import csv
import hashlib
import json
import os
import re
import shutil
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from jest_jax.data import images as images_lib
from jest_jax.data import storage
from jest_jax.data import tokenizer as tokenizer_lib

VERSION = "1.0.0"
REPORT_FILE = "conversion.json"
HELD_OUT_SPLIT = "validation"
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class ConversionError(ValueError):
  """The folder cannot be converted; the message names the row and the fix."""


def read_captions(path):
  """Rows `(line_number, image, caption, label)` of a JSONL or CSV captions
  file; a missing field is None."""
  rows = []
  with open(path, newline="", encoding="utf-8") as f:
    if path.endswith(".csv"):
      reader = csv.DictReader(f)
      if not reader.fieldnames or "image" not in reader.fieldnames:
        raise ConversionError(f"{path}: the CSV header must name an 'image' "
                              "and a 'caption' column")
      for row in reader:
        rows.append((reader.line_num, row.get("image"), row.get("caption"),
                     row.get("label") or None))
      return rows
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{line_number}: not JSON ({e}); each "
                              "line must be {\"image\": ..., \"caption\": "
                              "...}") from None
      if not isinstance(row, dict):
        raise ConversionError(f"{path}:{line_number}: expected a JSON object")
      rows.append((line_number, row.get("image"), row.get("caption"),
                   row.get("label")))
  return rows


def check_row(images_dir, image, caption):
  """`(image_bytes, caption)` of a usable row, or raises ValueError saying
  what is wrong with it."""
  if not isinstance(caption, str) or not caption.strip():
    raise ValueError("missing or empty caption")
  if not isinstance(image, str) or not image:
    raise ValueError("missing image path")
  path = os.path.join(images_dir, image)
  if not os.path.isfile(path):
    raise ValueError(f"image file {path} not found")
  with open(path, "rb") as f:
    data = f.read()
  try:
    images_lib.decode(data, 8)
  except images_lib.BadImage as e:
    raise ValueError(f"{path}: {e}") from None
  return data, caption.strip()


def holdout_share(key):
  """A key's place in [0, 1), from a hash of it (the same on every run)."""
  digest = hashlib.sha256(str(key).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_holdout(examples, fraction):
  """`(kept, held_out)`: the examples whose key (`[2]`, the image path)
  hashes below `fraction` are held out, in their original order."""
  kept, held_out = [], []
  for example in examples:
    (held_out if holdout_share(example[2]) < fraction else kept).append(
        example)
  return kept, held_out


def label_names(labels):
  """Class names for the labels of a dataset: the integers 0..max as
  strings if every label is an integer, else the sorted distinct names."""
  labels = set(labels)
  if all(isinstance(v, int) or str(v).strip().isdigit() for v in labels):
    return [str(i) for i in range(max(int(v) for v in labels) + 1)]
  return sorted(str(v).strip() for v in labels)


def scan(images_dir, captions_path, bad_records, require_label=False):
  """The usable rows of one captions file, and a report of the others.

  Returns:
    `(examples, skipped)`: a list of `(image_bytes, caption, image_path,
    label or None)` and a list of `{"row", "image", "reason"}`.
  Raises:
    ConversionError: a bad row with `bad_records="error"`.
  """
  examples, skipped = [], []
  for line_number, image, caption, label in read_captions(captions_path):
    try:
      if require_label and (label is None or not str(label).strip()):
        raise ValueError("missing label (other rows have one)")
      data, text = check_row(images_dir, image, caption)
    except ValueError as e:
      where = f"{captions_path}:{line_number}"
      if bad_records == "error":
        raise ConversionError(f"{where}: {e}; fix or remove the row, or pass "
                              "--bad_records=skip") from None
      skipped.append({"row": where, "image": image, "reason": str(e)})
      continue
    examples.append((data, text, str(image), label))
  return examples, skipped


def _has_labels(captions):
  return any(row[3] is not None
             for path in captions.values() for row in read_captions(path))


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Image–caption pairs scanned from a folder (see `convert`)."""

  VERSION = tfds.core.Version(VERSION)
  code_path = None  # No download checksums to look up.

  def __init__(self, *, splits, class_names=None, float_fields=(), **kwargs):
    # {split: [(image bytes, caption, path[, label or None[, floats]]), ...]}
    self._splits = splits
    self._class_names = class_names
    self._float_fields = tuple(float_fields)
    super().__init__(**kwargs)

  def _info(self):
    features = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "caption": tfds.features.Text(),
        "file": tfds.features.Text(),
        "index": tfds.features.Scalar(np.int64),
    }
    if self._class_names:
      features["label"] = tfds.features.ClassLabel(names=self._class_names)
    for field in self._float_fields:
      features[field] = tfds.features.Scalar(np.float32)
    return tfds.core.DatasetInfo(
        builder=self,
        description="Image-caption pairs converted by "
                    "jest_jax.data.convert_folder.",
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples)
            for split, examples in self._splits.items()}

  def _generate_examples(self, examples):
    ids = {name: i for i, name in enumerate(self._class_names or ())}
    for index, (data, caption, path, *rest) in enumerate(examples):
      example = {"image": data, "caption": caption, "file": path,
                 "index": index}
      if ids:
        example["label"] = ids[str(rest[0]).strip()]
      if self._float_fields:
        example.update(zip(self._float_fields, rest[1]))
      yield index, example


def convert(images_dir, captions, name, data_dir="", *, tokenizer="",
            vocab_size=256, model_type="unigram", bad_records="skip",
            holdout=0.0, overwrite=False):
  """Scans a folder's captions files and writes the TFDS dataset `name`.

  Args:
    images_dir: folder the captions' image paths are relative to.
    captions: `{split: captions file}`.
    name: dataset name (lower case, digits, underscores).
    data_dir: TFDS data dir ("": the default, see `storage`).
    tokenizer, vocab_size, model_type, overwrite: see `write_dataset`.
    bad_records: "skip" or "error" (see the module docstring).
    holdout: share of the train rows moved to a `validation` split (by a
      hash of the image path; see the module docstring).
  Returns:
    The report dict written to `conversion.json`: the dataset directory,
    per-split counts of kept and skipped rows, and the skipped rows.
  """
  if bad_records not in ("skip", "error"):
    raise ConversionError(f"--bad_records={bad_records!r}: use skip or error")
  if not 0.0 <= holdout < 1.0:
    raise ConversionError(f"--holdout={holdout}: use a share in [0, 1)")
  if holdout and HELD_OUT_SPLIT in captions:
    raise ConversionError(f"--holdout and a {HELD_OUT_SPLIT}= captions file "
                          "both make the validation split; give one")
  if holdout and "train" not in captions:
    raise ConversionError("--holdout splits the train captions; give one")
  labelled = _has_labels(captions)
  splits, report = {}, {"splits": {}, "skipped": []}
  for split, path in captions.items():
    examples, skipped = scan(images_dir, path, bad_records, labelled)
    if not examples:
      raise ConversionError(f"{path}: no usable rows (skipped "
                            f"{len(skipped)}); check the paths and captions")
    splits[split] = examples
    report["splits"][split] = {"kept": len(examples), "skipped": len(skipped)}
    report["skipped"] += skipped
  if holdout:
    splits["train"], held_out = split_holdout(splits["train"], holdout)
    if not held_out or not splits["train"]:
      raise ConversionError(f"--holdout={holdout} leaves "
                            f"{len(splits['train'])} train and "
                            f"{len(held_out)} held-out rows; change it")
    splits[HELD_OUT_SPLIT] = held_out
    report["splits"]["train"]["kept"] = len(splits["train"])
    report["splits"][HELD_OUT_SPLIT] = {"kept": len(held_out), "skipped": 0,
                                        "held_out_from": "train"}
    report["holdout"] = holdout
  class_names = None
  if labelled:
    class_names = label_names(example[3] for examples in splits.values()
                              for example in examples)
    report["class_names"] = class_names
  return write_dataset(name, splits, data_dir, tokenizer=tokenizer,
                       vocab_size=vocab_size, model_type=model_type,
                       overwrite=overwrite, report=report,
                       class_names=class_names)


def write_dataset(name, splits, data_dir="", *, tokenizer="", vocab_size=256,
                  model_type="unigram", overwrite=False, report=None,
                  class_names=None, float_fields=(), tokenizer_texts=None):
  """Writes examples as the TFDS dataset `name` (no checks on them).

  Args:
    name: dataset name (lower case, digits, underscores).
    splits: `{split: [(image bytes, caption, image path[, label]), ...]}`
      (a label is a name in `class_names`, or an integer).
    data_dir: TFDS data dir ("": the default).
    tokenizer: a SentencePiece `.model` to store with the data; "" trains
      one on the train split's captions (`vocab_size`, `model_type`).
    overwrite: replace an existing dataset of that name.
    report: extra fields for `conversion.json`.
    class_names: the `label` feature's names (None: no label feature).
    float_fields: names of float32 features, their values the examples'
      fifth item (a list).
    tokenizer_texts: what a trained tokenizer learns from (default: the
      train split's captions).
  Returns:
    The report, with `name` and `dataset_dir` added.
  """
  if not _NAME_PATTERN.match(name):
    raise ConversionError(f"--name={name!r}: use lower case letters, digits "
                          "and underscores, starting with a letter")
  if "train" not in splits and not tokenizer:
    raise ConversionError("no train split to train a tokenizer on; give a "
                          "train captions file or --tokenizer")
  builder_class = type(f"Folder_{name}", (_FolderBuilder,),
                       {"name": name, "__module__": __name__},
                       skip_registration=True)
  builder = builder_class(splits=splits, class_names=class_names,
                          float_fields=float_fields,
                          data_dir=storage.resolve_data_dir(data_dir))
  dataset_dir = os.fspath(builder.data_path)
  if os.path.exists(dataset_dir):
    if not overwrite:
      raise ConversionError(f"{dataset_dir} exists; pass --overwrite to "
                            "replace it")
    shutil.rmtree(dataset_dir)
  report = dict(report or {}, name=name, dataset_dir=dataset_dir)

  def write_extras(directory):
    model_path = os.path.join(directory, storage.TOKENIZER_FILE)
    if tokenizer:
      with open(os.path.expanduser(tokenizer), "rb") as f:
        model = f.read()
      tokenizer_lib.SentencePieceTokenizer(model)  # Checks that it loads.
      storage.write_bytes_atomically(model_path, model)
    else:
      tokenizer_lib.train_sentencepiece(
          tokenizer_texts or [example[1] for example in splits["train"]],
          model_path,
          vocab_size=vocab_size, model_type=model_type)
    storage.write_bytes_atomically(
        os.path.join(directory, REPORT_FILE),
        json.dumps(report, indent=2, sort_keys=True).encode())

  storage.prepare(builder, write_extras=write_extras)
  return report


def parse_captions(values):
  captions = {}
  for value in values:
    split, sep, path = value.partition("=")
    if not sep:
      split, path = "train", value
    if split in captions:
      raise ConversionError(f"--captions names split {split!r} twice")
    captions[split] = path
  return captions


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not _IMAGES.value or not _CAPTIONS.value or not _NAME.value:
    sys.exit("error: --images, --captions and --name are required")
  try:
    report = convert(
        _IMAGES.value, parse_captions(_CAPTIONS.value), _NAME.value,
        _DATA_DIR.value, tokenizer=_TOKENIZER.value,
        vocab_size=_VOCAB_SIZE.value, model_type=_MODEL_TYPE.value,
        bad_records=_BAD_RECORDS.value, holdout=_HOLDOUT.value,
        overwrite=_OVERWRITE.value)
  except (ConversionError, OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  for row in report["skipped"]:
    print(f"skipped {row['row']}: {row['reason']}")
  counts = ", ".join(f"{split}: {c['kept']} kept, {c['skipped']} skipped"
                     for split, c in report["splits"].items())
  print(f"wrote {report['dataset_dir']} ({counts})")


def define_tokenizer_flags():
  """`--tokenizer`, `--vocab_size`, `--model_type` (both converters')."""
  return (
      flags.DEFINE_string("tokenizer", "", "SentencePiece .model to store "
                          "with the data (default: train one)."),
      flags.DEFINE_integer("vocab_size", 256, "Pieces of a trained tokenizer "
                           "(a soft limit)."),
      flags.DEFINE_enum("model_type", "unigram",
                        ["unigram", "bpe", "word", "char"],
                        "SentencePiece model type to train."))


def _define_flags():
  """CLI flags, defined only when this module is the program (other
  programs import its functions)."""
  global _IMAGES, _CAPTIONS, _NAME, _DATA_DIR, _TOKENIZER, _VOCAB_SIZE
  global _MODEL_TYPE, _BAD_RECORDS, _OVERWRITE, _HOLDOUT
  _IMAGES = flags.DEFINE_string("images", None, "Folder the image paths in the "
                                "captions file are relative to.")
  _CAPTIONS = flags.DEFINE_multi_string(
      "captions", None, "Captions file (JSONL or CSV with image, caption), or "
      "SPLIT=FILE; may repeat (bare FILE: the train split).")
  _NAME = flags.DEFINE_string("name", None, "Dataset name, e.g. my_pairs.")
  _DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default: "
                                  "$JEST_JAX_DATA_DIR or data_cache/tfds).")
  _TOKENIZER, _VOCAB_SIZE, _MODEL_TYPE = define_tokenizer_flags()
  _BAD_RECORDS = flags.DEFINE_enum("bad_records", "skip", ["skip", "error"],
                                   "What to do with an unusable row.")
  _HOLDOUT = flags.DEFINE_float(
      "holdout", 0.0, "Share of the train rows held out as a 'validation' "
      "split (chosen by a hash of the image path: stable, disjoint).")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing "
                                 "dataset of the same name.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
