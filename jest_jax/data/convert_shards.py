"""Converts WebDataset tar shards (as img2dataset writes them) into a TFDS
dataset (ArrayRecord files), like `convert_folder` does for a folder.

  python -m jest_jax.data.convert_shards 'DIR/{000000..000099}.tar' \
      --name my_web [--data_dir DIR] [--workers 4] [--image_size 64] \
      [--holdout 0.01] [--json_fields clip_score] [--label_field cls] \
      [--tokenizer X.model]

Shards: a glob or a brace range (`{000000..000099}`, zero padding kept),
read in sorted order. Each holds members `KEY.EXT` grouped by KEY (the name
up to its first dot): an image (`jpg`, `jpeg`, `png`, `webp`), a caption
(`txt`) and optionally `json`, whose numeric `--json_fields` become float
features (NaN where missing). `--label_field NAME` makes a `label` class
feature (so the data can be a zero-shot evaluator's) from the member
`KEY.NAME` (e.g. `cls`) or else the `.json` field NAME; a sample without it
is a bad record.

Two phases. (1) Each shard is streamed (tarfile, one member at a time),
checked with the folder converter's bad-record policy (missing or
undecodable image, missing or empty caption; a truncated shard loses its
tail, counted) and written to `DATA_DIR/.NAME.parts/SHARD.part` atomically,
then marked done (`SHARD.done.json`, its counts and skipped records). Shards
run in `--workers` processes; a rerun after a kill skips the shards marked
done. (2) The parts are assembled, in shard order, into the TFDS dataset;
the result depends only on the shards, so an interrupted and resumed
conversion writes the same bytes as an uninterrupted one. A marker records
the settings its part was made with (`--image_size`, `--crop`,
`--json_fields`, `--label_field`); a rerun with other settings is refused
rather than mixing parts.

Every record keeps `file` = `SHARD/KEY`, so a reference-cache row traces to
its source. `--image_size N` resizes (after a centre crop unless `--crop
none`) at conversion and stores PNG; without it the original bytes are kept.
`--holdout` moves a share of records into a `validation` split by a hash of
`SHARD/KEY` (stable across runs, disjoint from train).
"""

import glob
import io
import json
import math
import multiprocessing
import os
import re
import struct
import sys
import tarfile

from absl import app
from absl import flags
from PIL import Image

from jest_jax.data import convert_folder
from jest_jax.data import images as images_lib
from jest_jax.data import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARTS_SUFFIX = ".parts"
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LENGTH = struct.Struct("<I")


def expand_shards(pattern):
  """Shard paths of a glob or a brace range, sorted; raises
  ConversionError if none exists."""
  match = _BRACE.search(pattern)
  if match:
    first, last = match.group(1), match.group(2)
    width = len(first)
    paths = [pattern[:match.start()] + str(i).zfill(width)
             + pattern[match.end():]
             for i in range(int(first), int(last) + 1)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise convert_folder.ConversionError(
          f"{pattern}: {len(missing)} of {len(paths)} shards missing, e.g. "
          f"{missing[0]}; fix the range")
  else:
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise convert_folder.ConversionError(f"{pattern}: no shards match")
  return paths


def _shard_name(path):
  return os.path.basename(path).removesuffix(".tar")


def group_members(tar_path):
  """Yields `(key, {extension: bytes})` of one shard, streamed; a damaged
  member ends it with `(key, reason)` (a str) for the sample it was in."""
  key, members = None, {}
  try:
    with tarfile.open(tar_path, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        base = os.path.basename(member.name)
        member_key, _, extension = base.partition(".")
        if member_key != key:
          if key is not None:
            yield key, members
          key, members = member_key, {}
        members[extension.lower()] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    # The sample being read is lost with the rest of the shard.
    yield key, f"damaged shard ({type(e).__name__}: {e})"
    return
  if key is not None:
    yield key, members


def sample_label(members, extra, label_field):
  """The class name of a sample: its member `label_field` (text) or else
  its `.json` field; raises ValueError if it has neither."""
  if label_field in members:
    try:
      label = members[label_field].decode("utf-8").strip()
    except UnicodeDecodeError:
      raise ValueError(f"label member .{label_field} is not UTF-8") from None
  else:
    label = extra.get(label_field)
    label = "" if label is None or isinstance(label, (dict, list)) else (
        str(label).strip())
  if not label:
    raise ValueError(f"no label (member .{label_field} or .json field "
                     f"{label_field!r})")
  return label


def check_sample(members, image_size=0, crop="center"):
  """`(image bytes, caption, json dict)` of a usable sample, or raises
  ValueError saying what is wrong (the folder converter's policy)."""
  text = members.get("txt")
  try:
    caption = text.decode("utf-8").strip() if text is not None else ""
  except UnicodeDecodeError:
    raise ValueError("caption is not UTF-8 text") from None
  if not caption:
    raise ValueError("missing or empty caption")
  image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
  if image is None:
    raise ValueError("no image member (jpg, jpeg, png or webp)")
  try:
    if image_size:
      pixels = images_lib.decode(image, image_size, crop=crop)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="PNG")
      image = buffer.getvalue()
    else:
      images_lib.decode(image, 8)
  except images_lib.BadImage as e:
    raise ValueError(str(e)) from None
  extra = {}
  if "json" in members:
    try:
      extra = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
      extra = {}
  return image, caption, extra if isinstance(extra, dict) else {}


def _write_field(f, data):
  f.write(_LENGTH.pack(len(data)))
  f.write(data)


def _read_field(f):
  header = f.read(_LENGTH.size)
  if not header:
    return None
  (length,) = _LENGTH.unpack(header)
  return f.read(length)


def convert_shard(tar_path, parts_dir, image_size=0, crop="center",
                  bad_records="skip", json_fields=(), label_field=""):
  """Phase 1 for one shard: its checked samples -> `SHARD.part` and the
  done marker (both written atomically; the marker lists the shard's
  distinct labels when `label_field` is set). Returns the marker's dict; a
  shard already marked done is not read again."""
  name = _shard_name(tar_path)
  marker = os.path.join(parts_dir, f"{name}.done.json")
  # What a part's content depends on besides the shard.
  settings = dict(image_size=image_size, crop=crop,
                  json_fields=list(json_fields), label_field=label_field)
  if os.path.exists(marker):
    with open(marker) as f:
      report = json.load(f)
    if report.get("settings") != settings:
      raise convert_folder.ConversionError(
          f"{parts_dir} holds shards converted with other settings "
          f"({report.get('settings')}, now {settings}); rerun with those "
          f"flags or delete it and convert again")
    return report
  part = os.path.join(parts_dir, f"{name}.part")
  tmp = f"{part}.tmp{os.getpid()}"
  kept, skipped, labels = 0, [], set()
  with open(tmp, "wb") as f:
    for key, members in group_members(tar_path):
      where = f"{os.path.basename(tar_path)}:{key}"
      try:
        if isinstance(members, str):
          raise ValueError(members)
        image, caption, extra = check_sample(members, image_size, crop)
        label = (sample_label(members, extra, label_field) if label_field
                 else None)
      except ValueError as e:
        if bad_records == "error":
          os.remove(tmp)
          raise convert_folder.ConversionError(
              f"{where}: {e}; fix or remove the sample, or pass "
              "--bad_records=skip") from None
        skipped.append({"row": where, "image": key, "reason": str(e)})
        continue
      values = [extra.get(field) for field in json_fields]
      values = [float(v) if isinstance(v, (int, float)) else math.nan
                for v in values]
      _write_field(f, f"{name}/{key}".encode())
      _write_field(f, caption.encode())
      _write_field(f, image)
      _write_field(f, json.dumps({"floats": values, "label": label}).encode())
      kept += 1
      if label is not None:
        labels.add(label)
  os.replace(tmp, part)
  report = {"shard": name, "kept": kept, "skipped": skipped,
            "settings": settings}
  if label_field:
    report["labels"] = sorted(labels)
  storage.write_bytes_atomically(marker, json.dumps(report).encode())
  return report


def _convert_shard_star(args):
  return convert_shard(*args)


class ShardExamples:
  """The samples of the done parts, in shard order, as the folder
  converter's `(image bytes, caption, file, label, floats)` tuples;
  iterable more than once, read lazily."""

  def __init__(self, parts, keep):
    self.parts = parts  # [part file]
    self.keep = keep  # fn(file key) -> bool

  def __iter__(self):
    for part in self.parts:
      with open(part, "rb") as f:
        while True:
          key = _read_field(f)
          if key is None:
            break
          caption, image = _read_field(f).decode(), _read_field(f)
          meta = json.loads(_read_field(f))
          key = key.decode()
          if self.keep(key):
            yield image, caption, key, meta["label"], meta["floats"]

  def captions(self):
    return [example[1] for example in self]


def convert(pattern, name, data_dir="", *, workers=1, image_size=0,
            crop="center", bad_records="skip", holdout=0.0, json_fields=(),
            label_field="", tokenizer="", vocab_size=256, model_type="unigram",
            overwrite=False, stop_after_shards=None):
  """Converts the shards of `pattern` into the TFDS dataset `name`.

  Args:
    pattern: a glob or brace range of `.tar` shards.
    name, data_dir, tokenizer, vocab_size, model_type, overwrite: as for
      `convert_folder.write_dataset`.
    workers: processes converting shards in parallel.
    image_size: resize (and crop) to this side at conversion (0: keep).
    crop: "center" or "none".
    bad_records: "skip" or "error".
    holdout: share of records moved to a `validation` split.
    json_fields: numeric fields of each sample's `.json` kept as float
      features.
    label_field: a member extension or `.json` field holding each sample's
      class name (or integer); "" for no `label` feature.
    stop_after_shards: end after converting this many shards, as a kill
      would (for tests; the next call continues).
  Returns:
    The report written to `conversion.json` (per-split counts, skipped
    samples, shards), or None when stopped early.
  """
  if bad_records not in ("skip", "error"):
    raise convert_folder.ConversionError(
        f"--bad_records={bad_records!r}: use skip or error")
  if not 0.0 <= holdout < 1.0:
    raise convert_folder.ConversionError(
        f"--holdout={holdout}: use a share in [0, 1)")
  shards = expand_shards(pattern)
  names = [_shard_name(p) for p in shards]
  if len(set(names)) != len(names):
    raise convert_folder.ConversionError(
        f"{pattern}: two shards share a file name; convert them separately")
  root = storage.resolve_data_dir(data_dir)
  parts_dir = os.path.join(root, f".{name}{PARTS_SUFFIX}")
  os.makedirs(parts_dir, exist_ok=True)
  todo = [(path, parts_dir, image_size, crop, bad_records, tuple(json_fields),
           label_field) for path in shards]
  if stop_after_shards is not None:
    todo = todo[:stop_after_shards]
  if workers > 1:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
      reports = list(pool.imap(_convert_shard_star, todo))
  else:
    reports = [convert_shard(*args) for args in todo]
  if stop_after_shards is not None:
    return None
  parts = [os.path.join(parts_dir, f"{n}.part") for n in names]
  held_out = lambda key: convert_folder.holdout_share(key) < holdout
  splits = {"train": ShardExamples(parts, lambda key: not held_out(key))}
  if holdout:
    splits[convert_folder.HELD_OUT_SPLIT] = ShardExamples(parts, held_out)
  report = {"shards": len(shards), "skipped": [], "splits": {},
            "json_fields": list(json_fields)}
  for shard_report in reports:
    report["skipped"] += shard_report["skipped"]
  for split, examples in splits.items():
    report["splits"][split] = {"kept": sum(1 for _ in iter(_keys(examples)))}
  report["splits"]["train"]["skipped"] = len(report["skipped"])
  class_names = None
  if label_field:
    class_names = convert_folder.label_names(
        set().union(*(r["labels"] for r in reports)))
    report["label_field"] = label_field
  if not report["splits"]["train"]["kept"]:
    raise convert_folder.ConversionError(
        f"{pattern}: no usable samples (skipped {len(report['skipped'])})")
  return convert_folder.write_dataset(
      name, splits, data_dir, tokenizer=tokenizer, vocab_size=vocab_size,
      model_type=model_type, overwrite=overwrite, report=report,
      class_names=class_names, float_fields=tuple(json_fields),
      tokenizer_texts=None if tokenizer else splits["train"].captions())


def _keys(examples):
  for example in examples:
    yield example[2]


def main(argv):
  if len(argv) != 2:
    sys.exit("error: give one shard pattern, e.g. 'DIR/{000000..000099}.tar'")
  if not _NAME.value:
    sys.exit("error: --name is required")
  try:
    report = convert(
        argv[1], _NAME.value, _DATA_DIR.value, workers=_WORKERS.value,
        image_size=_IMAGE_SIZE.value, crop=_CROP.value,
        bad_records=_BAD_RECORDS.value, holdout=_HOLDOUT.value,
        json_fields=[f for f in _JSON_FIELDS.value.split(",") if f],
        label_field=_LABEL_FIELD.value,
        tokenizer=_TOKENIZER.value, vocab_size=_VOCAB_SIZE.value,
        model_type=_MODEL_TYPE.value, overwrite=_OVERWRITE.value)
  except (convert_folder.ConversionError, OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  for row in report["skipped"][:20]:
    print(f"skipped {row['row']}: {row['reason']}")
  counts = ", ".join(f"{split}: {c['kept']} kept"
                     for split, c in report["splits"].items())
  print(f"wrote {report['dataset_dir']} ({report['shards']} shards; {counts};"
        f" {len(report['skipped'])} skipped)")


def _define_flags():
  """CLI flags, defined only when this module is the program."""
  global _NAME, _DATA_DIR, _WORKERS, _IMAGE_SIZE, _CROP, _BAD_RECORDS
  global _HOLDOUT, _JSON_FIELDS, _LABEL_FIELD, _TOKENIZER, _VOCAB_SIZE
  global _MODEL_TYPE
  global _OVERWRITE
  _NAME = flags.DEFINE_string("name", None, "Dataset name, e.g. my_web.")
  _DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir (default: "
                                  "$JEST_JAX_DATA_DIR or data_cache/tfds).")
  _WORKERS = flags.DEFINE_integer("workers", 1, "Shards converted at once, "
                                  "each in its own process.")
  _IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Resize to this side "
                                     "at conversion (0: keep the bytes).")
  _CROP = flags.DEFINE_enum("crop", "center", list(images_lib.CROPS),
                            "Crop before resizing.")
  _BAD_RECORDS = flags.DEFINE_enum("bad_records", "skip", ["skip", "error"],
                                   "What to do with an unusable sample.")
  _HOLDOUT = flags.DEFINE_float("holdout", 0.0, "Share of samples held out "
                                "as a 'validation' split (by key hash).")
  _JSON_FIELDS = flags.DEFINE_string(
      "json_fields", "", "Comma-separated numeric fields of each sample's "
      ".json to keep (e.g. clip_score).")
  _LABEL_FIELD = flags.DEFINE_string(
      "label_field", "", "Member extension (e.g. cls) or .json field with "
      "each sample's class: makes a `label` feature for zero-shot evals.")
  _TOKENIZER, _VOCAB_SIZE, _MODEL_TYPE = convert_folder.define_tokenizer_flags()
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing "
                                 "dataset of the same name.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
