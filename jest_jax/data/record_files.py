"""Random access to the serialized records of a prepared TFDS split.

`RecordFiles` reads the split's ArrayRecord files directly, in the calling
thread, one record at a time (`seek` + `read` in file order, so records
sharing a chunk decode it once). It returns the same bytes as TFDS's data
source with `DeserializeMethod.RAW_BYTES` (the twin
`tests/test_record_files.py` checks) for a fraction of the host's CPU time.
The two batched paths spend it where no step can use it (measured on the
2-core test machine, `benchmarks/record_reads.py`):

- TFDS's data source starts a fresh thread pool on every `__getitems__`
  call;
- ArrayRecord's batched `read(indices)` hands each chunk to a 64-thread
  spinning pool and scans the file's whole chunk table on every call.

The loader already reads ahead in its own threads or processes, so
parallelism inside a call buys nothing; on a host that also feeds the
accelerator (or, on a CPU backend, *is* it) CPU time is what counts.
"""

import threading

import numpy as np

# Bytes a file read fetches at once: about one record of small (tens of
# pixels) images; larger records are read past it directly. 4-8 KiB read
# the demo's 2.7 KB records ~20% faster than ArrayRecord's 32 KiB.
_FILE_BUFFER_BYTES = 8192


class RecordFiles:
  """The records of TFDS `file_instructions` as one indexable sequence.

  Picklable (grain ships it to worker processes) and safe to call from
  several threads: each thread opens its own readers, lazily (a reader's
  seek position is its state).
  """

  def __init__(self, file_instructions):
    self._files = [(str(f.filename), int(f.skip), int(f.take))
                   for f in file_instructions if int(f.take) > 0]
    self._starts = np.cumsum([0] + [take for _, _, take in self._files])
    self._skips = np.asarray([skip for _, skip, _ in self._files] or [0])
    self._local = threading.local()

  def __len__(self):
    return int(self._starts[-1])

  def _reader(self, file_index):
    readers = self._local.__dict__.setdefault("readers", {})
    reader = readers.get(file_index)
    if reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      # Random access: no read-ahead, no thread pool.
      reader = array_record_module.ArrayRecordReader(
          self._files[file_index][0],
          options="readahead_buffer_size:0,max_parallelism:0",
          file_reader_buffer_size=_FILE_BUFFER_BYTES)
      readers[file_index] = reader
    return reader

  def __getitems__(self, indices):
    """The serialized records at `indices` (ints in `[0, len)`), in order."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(self)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
      bad = int(indices[(indices < 0) | (indices >= n)][0])
      raise IndexError(f"record {bad} is out of range for {n} records")
    order = np.argsort(indices, kind="stable")  # File by file, in order.
    ordered = indices[order]
    files = np.searchsorted(self._starts, ordered, side="right") - 1
    positions = ordered - self._starts[files] + self._skips[files]
    out = [b""] * len(indices)
    reader, current = None, -1
    for row, file_index, position in zip(order.tolist(), files.tolist(),
                                         positions.tolist()):
      if file_index != current:
        reader, current = self._reader(file_index), file_index
      reader.seek(position)
      out[row] = reader.read()
    return out

  def __getitem__(self, index):
    return self.__getitems__([index])[0]

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_local"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()
