"""Training and evaluation input: TFDS ArrayRecord files read with grain.

Every dataset is a TFDS dataset in ArrayRecord format, read by random access
(`tfds` data source) and loaded with grain:

  builtin  the procedural corpus (`data/corpus.py`), written once into
           `config.data.data_dir` on first use (`data/builtin_tfds.py`);
  tfds     any prepared image–text TFDS dataset, by `config.data.tfds_name`
           in `config.data.data_dir`, its features named by
           `image_key`, `text_key` (and optionally `corrupt_key`); a folder of
           images + captions becomes one with `python -m
           jest_jax.data.convert_folder`.

Order. The record stream is a grain `MapDataset`: record indices shuffled
with a fresh permutation per epoch (seeded by `(seed, epoch)`), repeated,
batched to the global super-batch. Super-batch `step` is therefore a pure
function of `(seed, step)`: a resumed run reads exactly what an uninterrupted
one would have, whatever was prefetched before the interruption.

Processes. With several JAX processes each loads only its share: process p
of P takes the contiguous block `[p * B/P, (p + 1) * B/P)` of every global
super-batch of B. The global batch is the concatenation of the processes'
blocks in process order (what `jax.make_array_from_process_local_data` builds
over a `data` mesh whose devices are ordered by process), so it is the same
for any number of processes.

Preprocessing (config.data): decode (PIL), optional centre crop, resize to
`image_size` (`resize_method`), uint8 `[H, W, 3]` (the value range [-1, 1]
is applied on device); captions tokenized with SentencePiece and padded /
cut to `max_tokens` (eos included). The tokenizer is `config.data.tokenizer`
(a `.model` file) or else the one stored with the dataset.

Bad records (undecodable or empty image, missing or empty caption, and with
`long_captions="bad"` a caption longer than `max_tokens`, in the data a run
trains on: the built-in evaluation probes always truncate):
`bad_records="skip"` replaces each by the next good record in index order (a
pure function of the data, so resume stays exact; its `index` is the one
returned, so reference embeddings stay aligned), logs it and counts it
(`TrainInput.bad_records`, `Split.bad_records`); `"error"` raises `DataError`
naming the record. All of this happens on the host, before any jitted code.
"""

import dataclasses
import functools
import hashlib
import json
import os
import sys
from typing import Any

from absl import logging
import grain
import jax
import numpy as np

from jest_jax.data import builtin_tfds
from jest_jax.data import corpus
from jest_jax.data import images as images_lib
from jest_jax.data import record_files
from jest_jax.data import storage
from jest_jax.data import tf_example
from jest_jax.data import tokenizer as tokenizer_lib

NAMES = ("builtin", "tfds")
BAD_RECORD_POLICIES = ("skip", "error")
LONG_CAPTION_POLICIES = ("truncate", "bad")
# Splits every run can evaluate on: the built-in corpus's clean probes.
PROBE_SPLITS = ("zeroshot", "retrieval")
# Most records tried, in index order, to replace one bad record.
_MAX_SUBSTITUTION_TRIES = 1000
# Records read per grain element when a whole split is loaded.
_SPLIT_CHUNK = 1024


class DataError(ValueError):
  """The data cannot be read as configured; the message names the record or
  setting and the fix."""


def corpus_config(config_data):
  """The built-in corpus's `CorpusConfig` from `config.data`."""
  return corpus.CorpusConfig(
      seed=config_data.seed, n_train=config_data.n_train,
      n_curated=config_data.n_curated, n_retrieval=config_data.n_retrieval,
      n_zeroshot=config_data.n_zeroshot, noise_rate=config_data.noise_rate,
      version=config_data.corpus_version,
      zipf_exponent=config_data.zipf_exponent,
      scene_mix=tuple(config_data.scene_mix),
      duplicate_rate=config_data.duplicate_rate,
      duplicate_paraphrase=config_data.duplicate_paraphrase,
      curated_balance=config_data.curated_balance,
      curated_missing=config_data.curated_missing,
      n_hard_negatives=config_data.n_hard_negatives)


# ------------------------------------------------------------- reading --


class _BadRecord(Exception):
  """One record is unusable (the message says why)."""


@dataclasses.dataclass
class RecordReader:
  """Reads records by index and preprocesses them into arrays.

  Picklable (grain ships it to worker processes). `read(indices)` is what
  one grain element computes.
  """
  source: Any  # A random-access TFDS data source.
  parse: Any  # serialized record -> dict (tf_example.FieldReader), or None
  # when `source` deserializes itself.
  num_records: int
  description: str  # "dataset:split", for messages.
  tokenizer: tokenizer_lib.SentencePieceTokenizer
  image_key: str
  text_key: str
  corrupt_key: str
  label_key: str
  image_size: int
  crop: str
  resize_method: str
  max_tokens: int
  bad_records: str
  long_captions: str

  def _example(self, record):
    """`(image uint8 [S, S, 3], caption str)` or raises `_BadRecord`."""
    if self.image_key not in record:
      raise _BadRecord(f"no image feature {self.image_key!r}")
    try:
      image = images_lib.decode(record[self.image_key], self.image_size,
                                crop=self.crop, method=self.resize_method)
    except images_lib.BadImage as e:
      raise _BadRecord(str(e)) from None
    if self.text_key not in record:
      raise _BadRecord(f"no caption feature {self.text_key!r}")
    text = record[self.text_key]
    if isinstance(text, (list, tuple, np.ndarray)):  # Several: the first.
      text = np.asarray(text, dtype=object).reshape(-1)
      text = text[0] if text.size else b""
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError:
        raise _BadRecord("caption is not UTF-8 text") from None
    text = str(text).strip()
    if not text:
      raise _BadRecord("empty caption")
    return image, text

  def _check_length(self, length):
    if self.long_captions == "bad" and length > self.max_tokens:
      raise _BadRecord(f"caption needs {length} tokens, more than "
                       f"max_tokens={self.max_tokens}")

  def _records(self, indices):
    """The stored records at `indices` (a list of ints), as dicts."""
    records = self.source.__getitems__(indices)
    if self.parse is not None:
      records = [self.parse(record) for record in records]
    return records

  def _substitute(self, record_index):
    """The next good record after `record_index` (wrapping), as
    `(index, image, caption)`."""
    tries = min(self.num_records - 1, _MAX_SUBSTITUTION_TRIES)
    for offset in range(1, tries + 1):
      candidate = (record_index + offset) % self.num_records
      try:
        image, caption = self._example(self._records([candidate])[0])
        _, length = self.tokenizer.encode_with_lengths([caption],
                                                       self.max_tokens)
        self._check_length(int(length[0]))
      except _BadRecord:
        continue
      return candidate, image, caption
    raise DataError(f"{self.description}: records {record_index}.."
                    f"{record_index + tries} are all bad; check the data")

  def read(self, record_indices):
    """Preprocessed records.

    Args:
      record_indices: int `[n]`.
    Returns:
      dict of `image` uint8 `[n, S, S, 3]`, `tokens` int32 `[n, L]`,
      `corrupt` bool `[n]`, `index` int64 `[n]` (after substitution), `label`
      int32 `[n]` (if the data has labels), `bad_records` (int, how many were
      replaced).
    Raises:
      DataError: a bad record under `bad_records="error"`.
    """
    indices = np.asarray(record_indices, dtype=np.int64).copy()
    n = len(indices)
    records = self._records(indices.tolist())
    size = self.image_size
    image = np.zeros((n, size, size, 3), dtype=np.uint8)
    captions = [""] * n
    bad = {}
    for row, record in enumerate(records):
      try:
        image[row], captions[row] = self._example(record)
      except _BadRecord as e:
        bad[row] = str(e)
    tokens, lengths = self.tokenizer.encode_with_lengths(captions,
                                                         self.max_tokens)
    for row in range(n):
      if row not in bad:
        try:
          self._check_length(int(lengths[row]))
        except _BadRecord as e:
          bad[row] = str(e)
    for row, reason in sorted(bad.items()):
      where = f"{self.description} record {indices[row]}"
      if self.bad_records == "error":
        raise DataError(f"{where}: {reason}; fix or remove it, or set "
                        "config.data.bad_records=skip")
      logging.log_first_n(logging.WARNING, "skipping %s: %s", 100, where,
                          reason)
      indices[row], image[row], caption = self._substitute(int(indices[row]))
      tokens[row] = self.tokenizer.encode([caption], self.max_tokens)[0]
      records[row] = self._records([int(indices[row])])[0]
    out = {"image": image, "tokens": tokens,
           "corrupt": np.zeros(n, dtype=bool), "index": indices,
           "bad_records": len(bad)}
    if self.corrupt_key:
      out["corrupt"] = np.array(
          [bool(record.get(self.corrupt_key, False)) for record in records])
    if self.label_key and all(self.label_key in record for record in records):
      out["label"] = np.array([record[self.label_key] for record in records],
                              dtype=np.int32)
    return out


@dataclasses.dataclass
class Records:
  """One split of a dataset, opened: its reader, size and fingerprint."""
  reader: RecordReader
  fingerprint: str
  dataset_dir: str

  def __len__(self):
    return self.reader.num_records


def _freeze(config_data):
  return json.dumps(config_data.to_dict(), sort_keys=True)


def _builtin_builder(config_data, split):
  """The read-only builder of the built-in corpus holding `split` (written
  on first use) and the split's corpus fingerprint."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cfg = corpus_config(config_data)
  if config_data.name != "builtin":
    # Only the probes are read: a corpus without train / curated records.
    cfg = dataclasses.replace(cfg, n_train=0, n_curated=0)
  name, root = builtin_tfds.prepare(cfg, config_data.data_dir)
  builder = tfds.builder_from_directory(
      os.path.join(root, name, builtin_tfds.VERSION))
  return builder, corpus.fingerprint(cfg, split)


def _tfds_builder(config_data):
  """The builder of the prepared dataset `config.data.tfds_name`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = storage.resolve_data_dir(config_data.data_dir)
  try:
    # From the prepared files, whatever builder code is (not) importable.
    builder = tfds.core.read_only_builder.builder_from_files(
        config_data.tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f"config.data.tfds_name={config_data.tfds_name!r}: no such prepared "
        f"dataset in {data_dir} ({type(e).__name__}: {e}); convert a folder "
        "with `python -m jest_jax.data.convert_folder` or set "
        "config.data.data_dir") from None
  if not os.path.exists(os.fspath(builder.data_path)):
    raise DataError(f"config.data.tfds_name={config_data.tfds_name!r} is not "
                    f"prepared in {data_dir}; prepare it there first")
  return builder


def _split_identity(builder, split):
  """What changes when a prepared split's records change: its name,
  version, size and the sizes of its files."""
  dataset_dir = os.fspath(builder.data_path)
  file_bytes = sorted(
      (f, os.path.getsize(os.path.join(dataset_dir, f)))
      for f in os.listdir(dataset_dir) if f"-{split}." in f)
  return {"dataset": builder.info.full_name, "split": split,
          "num_examples": int(builder.info.splits[split].num_examples),
          "files": file_bytes}


def _tokenizer_for(config_data):
  """`config.data.tokenizer`, else the model stored with the dataset."""
  if config_data.tokenizer:
    path = os.path.expanduser(config_data.tokenizer)
    if not os.path.exists(path):
      raise DataError(f"config.data.tokenizer={config_data.tokenizer!r}: no "
                      "such SentencePiece .model file")
    return tokenizer_lib.SentencePieceTokenizer.load(path)
  if config_data.name == "builtin":
    return builtin_tfds.tokenizer(config_data.data_dir,
                                  config_data.corpus_version)
  path = os.path.join(os.fspath(_tfds_builder(config_data).data_path),
                      storage.TOKENIZER_FILE)
  if not os.path.exists(path):
    raise DataError(
        f"dataset {config_data.tfds_name!r} has no tokenizer stored with it "
        f"({path}); pass config.data.tokenizer=PATH.model (a SentencePiece "
        "model)")
  return tokenizer_lib.SentencePieceTokenizer.load(path)


@functools.lru_cache(maxsize=16)
def _open_records(frozen_config, split):
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config_data = ml_collections.ConfigDict(json.loads(frozen_config))
  builtin = config_data.name == "builtin" or split in PROBE_SPLITS
  if builtin:
    builder, corpus_fingerprint = _builtin_builder(config_data, split)
    identity = {"builtin": corpus_fingerprint}
    image_key, text_key, corrupt_key = "image", "caption", "corrupt"
  else:
    builder = _tfds_builder(config_data)
    image_key = config_data.image_key
    text_key = config_data.text_key
    corrupt_key = config_data.corrupt_key
  if split not in builder.info.splits:
    raise DataError(f"{builder.info.full_name} has no split {split!r}; it has "
                    f"{sorted(builder.info.splits)} (config.data.split)")
  if not builtin:
    identity = _split_identity(builder, split)
  features = builder.info.features
  for key, what in ((image_key, "image_key"), (text_key, "text_key"),
                    (corrupt_key, "corrupt_key")):
    if key and key not in features:
      raise DataError(f"config.data.{what}={key!r}: {builder.info.full_name} "
                      f"has no such feature; it has {sorted(features)}")
  label_key = "label" if "label" in features else ""
  parse = tf_example.FieldReader.for_features(
      features, [key for key in (image_key, text_key, corrupt_key, label_key)
                 if key])
  if parse is not None:
    # The serialized records, read file by file in the calling thread.
    source = record_files.RecordFiles(builder.info.splits[split]
                                      .file_instructions)
  else:  # TFDS's generic deserializer; images are still decoded by us.
    decoders = None
    if isinstance(features[image_key], tfds.features.Image):
      decoders = {image_key: tfds.decode.SkipDecoding()}
    source = builder.as_data_source(split=split, decoders=decoders)
  tokenizer_ = _tokenizer_for(config_data)
  # The policy is for the user's data: the built-in probes' captions are
  # clean, and an eval must not fail on its own prompts' length.
  long_captions = ("truncate" if split in PROBE_SPLITS
                   else config_data.long_captions)
  reader = RecordReader(
      source=source, parse=parse, num_records=len(source),
      description=f"{builder.info.full_name}:{split}", tokenizer=tokenizer_,
      image_key=image_key, text_key=text_key, corrupt_key=corrupt_key,
      label_key=label_key, image_size=config_data.image_size, crop=config_data.crop,
      resize_method=config_data.resize_method,
      max_tokens=config_data.max_tokens, bad_records=config_data.bad_records,
      long_captions=long_captions)
  # What a model sees depends on the preprocessing and tokenizer too.
  identity.update(
      tokenizer=tokenizer_.fingerprint, max_tokens=config_data.max_tokens,
      image_size=config_data.image_size, crop=config_data.crop,
      resize_method=config_data.resize_method,
      long_captions=long_captions,
      keys=[image_key, text_key, corrupt_key])
  fingerprint = hashlib.sha256(
      json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
  return Records(reader=reader, fingerprint=fingerprint,
                 dataset_dir=os.fspath(builder.data_path))


def open_records(config_data, split):
  """Opens `split` of the configured dataset (preparing the built-in corpus
  on first use); cached per process."""
  _check_policies(config_data)
  return _open_records(_freeze(config_data), split)


def _check_policies(config_data):
  if config_data.name not in NAMES:
    raise DataError(f"config.data.name={config_data.name!r}: use one of "
                    f"{NAMES}")
  if config_data.bad_records not in BAD_RECORD_POLICIES:
    raise DataError(f"config.data.bad_records={config_data.bad_records!r}: "
                    f"use one of {BAD_RECORD_POLICIES}")
  if config_data.long_captions not in LONG_CAPTION_POLICIES:
    raise DataError(f"config.data.long_captions="
                    f"{config_data.long_captions!r}: use one of "
                    f"{LONG_CAPTION_POLICIES}")


def tokenizer(config_data):
  """The SentencePiece tokenizer of `config_data`'s dataset."""
  return open_records(config_data, config_data.split).reader.tokenizer


# ------------------------------------------------------------- streams --


def _stream_seed(seed):
  """A uint32 grain shuffle seed from the run's seed (hashed, so runs with
  nearby seeds do not share epochs: grain seeds epoch e with seed + e)."""
  return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])


def index_stream(seed, num_records, batch_size, start=0, stop=None):
  """grain `MapDataset`: step -> int64 `[stop - start]` record indices, rows
  `start:stop` (default: all) of the step's batch of `batch_size`.

  Position `step * batch_size + i` of the endless stream is record
  `permutation(seed, epoch)[position % num_records]`, `epoch = position //
  num_records`: every epoch visits every record once, in a fresh order
  (grain's index shuffle, computed per position, never materialised). It is
  the stream of grain's `MapDataset.range(n).shuffle(seed).repeat()` (the
  twin the tests compare with), computed by calling grain's `index_shuffle`
  directly: about half the cost a position of going through the dataset's
  layers. A process computes only its own rows: all of a pod's super-batch
  (163,840) would take a host ~1 s a step.
  """
  stop = batch_size if stop is None else stop
  shuffle_seed = _stream_seed(seed)
  max_index = num_records - 1

  def rows(step):
    first = step * batch_size
    out = np.empty(stop - start, dtype=np.int64)
    for row, position in enumerate(range(first + start, first + stop)):
      epoch, within = divmod(position, num_records)
      # What grain's ShuffleMapDataset computes: one seed per epoch.
      out[row] = grain.experimental.index_shuffle(
          within, max_index=max_index, seed=(shuffle_seed + epoch) % 2**32,
          rounds=4)
    return out

  return grain.MapDataset.range(sys.maxsize // batch_size).map(rows)


def _join_reference(reference, element):
  """The element with its reference rows, aligned with its `index` (after
  bad-record substitution), read in the same grain map step so they are
  prefetched with it."""
  return dict(element, reference=reference.read(element["index"]))


class TrainInput:
  """The training stream of one process.

  `batch(step)` returns this process's share of super-batch `step` as host
  arrays: `image` uint8 `[B_local, H, W, 3]`, `tokens` int32 `[B_local, L]`,
  `corrupt` bool `[B_local]` (all False for data without the flag),
  `index` int64 `[B_local]` (record indices) and, given a `reference` cache,
  `reference`: the `selection.Embeddings` of those records (`image`, `text`
  `[B_local, d]` in the cache's stored dtype, row i the reference's view of
  record `index[i]`; `temperature`, `bias` float32 scalars), read in the
  same grain map step as the records, so it is prefetched with them. It is
  a pure function of `(seed, step)`.

  Consecutive calls (`step`, `step + 1`, ...) are served by a grain iterator
  that prefetches `config.data.prefetch` batches ahead in background threads,
  or in `config.data.num_workers` processes; any other call reads directly.
  `batches(start_step)` is the same stream as an iterator.

  Attributes:
    bad_records: records replaced so far (policy "skip"), this process.
  """

  def __init__(self, config_data, split_name, batch_size, seed, *,
               reference=None, process_index=None, process_count=None):
    self.records = open_records(config_data, split_name)
    if reference is not None and reference.count != len(self.records):
      raise DataError(f"the reference cache holds {reference.count} records, "
                      f"{self.records.reader.description} has "
                      f"{len(self.records)}")
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
    if batch_size % process_count:
      raise DataError(f"the super-batch ({batch_size}) must split evenly over "
                      f"{process_count} processes")
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.seed = seed
    self.num_workers = config_data.num_workers
    self.prefetch = config_data.prefetch
    self.bad_records = 0
    start = process_index * self.local_batch_size
    self._dataset = (
        index_stream(seed, len(self.records), batch_size, start,
                     start + self.local_batch_size)
        .map(self.records.reader.read))
    if reference is not None:
      self._dataset = self._dataset.map(
          functools.partial(_join_reference, reference))
    self._iterator = None
    self._next_step = None  # The step the iterator yields next.
    self._last_step = None

  def __len__(self):
    return len(self.records)

  @property
  def fingerprint(self):
    return self.records.fingerprint

  @property
  def image_shape(self):
    size = self.records.reader.image_size
    return (size, size, 3)

  def _finish(self, element):
    element = dict(element)
    self.bad_records += element.pop("bad_records")
    element.pop("label", None)
    return element

  def _iterate(self, start_step):
    dataset = self._dataset[start_step:].to_iter_dataset(grain.ReadOptions(
        num_threads=max(1, min(self.prefetch, 4)),
        prefetch_buffer_size=self.prefetch))
    if self.num_workers:
      _absl_flags_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.num_workers,
          per_worker_buffer_size=max(1, self.prefetch)))
    return iter(dataset)

  def batches(self, start_step=0):
    """Yields `batch(start_step)`, `batch(start_step + 1)`, ... prefetched."""
    iterator = self._iterate(start_step)
    try:
      for element in iterator:
        yield self._finish(element)
    finally:
      if hasattr(iterator, "close"):
        iterator.close()

  def batch(self, step):
    if self._iterator is not None and step == self._next_step:
      element = next(self._iterator)
    else:
      self.close()
      element = self._dataset[step]
      if (step - 1 == self._last_step
          and (self.prefetch > 0 or self.num_workers > 0)):
        self._iterator = self._iterate(step + 1)
    self._last_step, self._next_step = step, step + 1
    return self._finish(element)

  def close(self):
    """Stops the prefetching threads or worker processes, if any."""
    iterator, self._iterator = self._iterator, None
    if iterator is not None and hasattr(iterator, "close"):
      iterator.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # Interpreter shutdown.


def _absl_flags_parsed():
  """grain's worker processes read absl flags; outside an absl app (tests,
  notebooks) mark them parsed with their defaults first."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ---------------------------------------------------------- eval splits --


@dataclasses.dataclass
class Split:
  """One split in host memory, aligned by record index."""
  arrays: dict  # image, tokens, corrupt, index (+ label if the data has it).
  fingerprint: str
  bad_records: int = 0

  def __len__(self):
    return len(self.arrays["index"])


def read_ranges(records, ranges, prefetch=1):
  """Iterates over record ranges `[(start, stop), ...]` in the given order,
  yielding `RecordReader.read` dicts, the next `prefetch` read ahead in a
  grain thread (while the caller works on the current one)."""
  chunks = (grain.MapDataset.source(list(ranges))
            .map(lambda bounds: np.arange(*bounds))
            .map(records.reader.read))
  if prefetch:
    chunks = chunks.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=prefetch))
  return iter(chunks)


@functools.lru_cache(maxsize=8)
def _load_split(frozen_config, split):
  import ml_collections  # pylint: disable=g-import-not-at-top
  config_data = ml_collections.ConfigDict(json.loads(frozen_config))
  records = open_records(config_data, split)
  n = len(records)
  chunks = list(read_ranges(records, [
      (start, min(start + _SPLIT_CHUNK, n)) for start in range(0, n,
                                                               _SPLIT_CHUNK)]))
  arrays = {key: np.concatenate([chunk[key] for chunk in chunks])
            for key in chunks[0] if key != "bad_records"}
  bad = sum(chunk["bad_records"] for chunk in chunks)
  return Split(arrays=arrays, fingerprint=records.fingerprint,
               bad_records=bad)


def load_split(config_data, split):
  """A whole split in memory (the evaluation probes, small splits)."""
  return _load_split(_freeze(config_data), split)
