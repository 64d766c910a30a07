"""Random access to the serialized records of a prepared TFDS split.

`RecordFiles` reads the split's ArrayRecord files directly, in the calling
thread: a call's indices are grouped by file and each file's records are
fetched with one `ArrayRecordReader.read(positions)`. It returns the same
bytes as TFDS's data source with `DeserializeMethod.RAW_BYTES` (the twin
`tests/test_record_files.py` checks), which starts a fresh thread pool on
every `__getitems__` call: on the 2-core test machine that took 2.2x the
time of the reads themselves at the demo's 64 records a batch and 1.6x at
320 (7.3 vs 3.3 ms, 15.7 vs 9.6 ms), time taken from the train step when
the host and the device share cores. The loader already reads ahead in
its own threads or processes, so a per-call pool buys nothing.
"""

import numpy as np


class RecordFiles:
  """The records of TFDS `file_instructions` as one indexable sequence.

  Picklable (grain ships it to worker processes): readers are opened lazily
  in each process.
  """

  def __init__(self, file_instructions):
    self._files = [(str(f.filename), int(f.skip), int(f.take))
                   for f in file_instructions if int(f.take) > 0]
    self._starts = np.cumsum([0] + [take for _, _, take in self._files])
    self._readers = {}

  def __len__(self):
    return int(self._starts[-1])

  def _reader(self, file_index):
    reader = self._readers.get(file_index)
    if reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      # Random access: no read-ahead (what TFDS's data source sets too).
      reader = array_record_module.ArrayRecordReader(
          self._files[file_index][0], options="readahead_buffer_size:0",
          file_reader_buffer_size=32768)
      self._readers[file_index] = reader
    return reader

  def __getitems__(self, indices):
    """The serialized records at `indices` (ints in `[0, len)`), in order."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(self)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
      bad = int(indices[(indices < 0) | (indices >= n)][0])
      raise IndexError(f"record {bad} is out of range for {n} records")
    files = np.searchsorted(self._starts, indices, side="right") - 1
    out = [b""] * len(indices)
    for file_index in np.unique(files):
      rows = np.flatnonzero(files == file_index)
      _, skip, _ = self._files[file_index]
      positions = indices[rows] - self._starts[file_index] + skip
      records = self._reader(int(file_index)).read(positions.tolist())
      for row, record in zip(rows.tolist(), records):
        out[row] = record
    return out

  def __getitem__(self, index):
    return self.__getitems__([index])[0]

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_readers"] = {}
    return state
