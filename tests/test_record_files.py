"""`RecordFiles` (the loader's record reader) against ArrayRecord's own data
source, the one TFDS's `as_data_source` wraps."""

import collections
import concurrent.futures
import pickle
import sys

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax.data import record_files

Instruction = collections.namedtuple(
    "Instruction", "filename skip take examples_in_shard")


@pytest.fixture(name="instructions", params=[1, 4])
def _instructions(tmp_path, request):
  """Three files of 7, 1 and 12 records, read as a slice of each (as TFDS's
  `train[a:b]` splits are); one record a chunk (what TFDS writes) or four
  (chunks shared by records read in one call)."""
  out, count = [], 0
  for i, size in enumerate((7, 1, 12)):
    path = str(tmp_path / f"data.array_record-{i:05d}-of-00003")
    writer = array_record_module.ArrayRecordWriter(
        path, f"group_size:{request.param}")
    for _ in range(size):
      writer.write(f"record {count}".encode() * (1 + count % 3))
      count += 1
    writer.close()
    skip, take = {0: (2, 5), 1: (0, 1), 2: (3, 9)}[i]
    out.append(Instruction(path, skip, take, size))
  return out


def test_reads_what_array_records_data_source_reads(instructions):
  ours = record_files.RecordFiles(instructions)
  twin = array_record_data_source.ArrayRecordDataSource(instructions)
  assert len(ours) == len(twin) == 15
  rng = np.random.default_rng(0)
  # Unordered, repeated, across every file, and the two ends.
  indices = rng.integers(0, 15, size=40).tolist() + [0, 14, 5, 5]
  assert ours.__getitems__(indices) == list(twin.__getitems__(indices))
  assert [ours[i] for i in range(15)] == [twin[i] for i in range(15)]
  assert ours.__getitems__([]) == []
  # Grain ships the source to worker processes.
  shipped = pickle.loads(pickle.dumps(ours))
  assert shipped.__getitems__(indices) == ours.__getitems__(indices)


def test_threads_reading_at_once_each_get_their_records(instructions):
  # grain's prefetch threads share one source; a reader's seek position is
  # per thread.
  files = record_files.RecordFiles(instructions)
  twin = array_record_data_source.ArrayRecordDataSource(instructions)
  rng = np.random.default_rng(1)
  batches = [rng.integers(0, 15, size=30).tolist() for _ in range(64)]
  switch = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)  # Threads interleave between calls.
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      got = list(pool.map(files.__getitems__, batches))
  finally:
    sys.setswitchinterval(switch)
  assert got == [list(twin.__getitems__(b)) for b in batches]


def test_out_of_range_is_an_index_error(instructions):
  files = record_files.RecordFiles(instructions)
  with pytest.raises(IndexError, match="record 15 is out of range"):
    files.__getitems__([3, 15])
  with pytest.raises(IndexError, match="record -1"):
    files[-1]


def test_the_loader_reads_a_prepared_split_as_tfds_does(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.data.update(dict(data_dir=str(tmp_path), n_train=40, n_curated=8,
                          n_retrieval=8, n_zeroshot=24))
  records = input_pipeline.open_records(config.data, "train")
  twin = tfds.builder_from_directory(records.dataset_dir).as_data_source(
      split="train",
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  indices = list(range(len(twin)))[::-1]
  assert records.reader.source.__getitems__(indices) == list(
      twin.__getitems__(indices))
