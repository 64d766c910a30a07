"""Random reads of serialized records: wall and CPU time per record.

  python benchmarks/record_reads.py [--batches 60] [--out benchmarks/results]

Reads the built-in corpus's training split (written on first use; 100,000
records of ~2.7 KB in 4 ArrayRecord files, TFDS's `group_size:1`) in the
loader's order (`input_pipeline.index_stream`, the demo seed), a batch at a
time, for the IID batch (64) and the JEST super-batch (320), three ways:

- `tfds`: `builder.as_data_source(..., RAW_BYTES).__getitems__` (TFDS's
  data source, a fresh thread pool per call);
- `array_record batched`: one `ArrayRecordReader.read(positions)` per file
  and batch (ArrayRecord's own thread pool);
- `RecordFiles`: what the loader uses (`jest_jax/data/record_files.py`):
  `seek` + `read` per record, in the calling thread.

CPU time is the process's (every thread's): on a host that also runs the
step (a CPU backend) or feeds an accelerator, CPU time spent in spinning
pools is taken from it. All three return the same bytes (checked here
too). Prints a table, writes `record_reads.json`.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # pylint: disable=g-import-not-at-top,wrong-import-position

from jest_jax import config_lib  # pylint: disable=wrong-import-position
from jest_jax import input_pipeline  # pylint: disable=wrong-import-position
from jest_jax.data import record_files  # pylint: disable=wrong-import-position


def batched_array_record(instructions):
  """`indices -> records` with one batched ArrayRecord read per file."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  files = [(str(f.filename), int(f.skip), int(f.take))
           for f in instructions if int(f.take) > 0]
  starts = np.cumsum([0] + [take for _, _, take in files])
  readers = [array_record_module.ArrayRecordReader(
      name, options="readahead_buffer_size:0") for name, _, _ in files]

  def read(indices):
    indices = np.asarray(indices)
    which = np.searchsorted(starts, indices, side="right") - 1
    out = [b""] * len(indices)
    for f in np.unique(which):
      rows = np.flatnonzero(which == f)
      got = readers[f].read((indices[rows] - starts[f]
                             + files[f][1]).tolist())
      for row, record in zip(rows.tolist(), got):
        out[row] = record
    return out
  return read


def per_record(read, batches, batch_size):
  """(wall µs, CPU µs) per record over `batches` batches of the stream,
  after two warm-up batches."""
  stream = input_pipeline.index_stream(0, 100_000, batch_size)
  for step in range(2):
    read(stream[step].tolist())
  wall = cpu = 0.0
  for step in range(2, 2 + batches):
    indices = stream[step].tolist()
    t0, c0 = time.perf_counter(), time.process_time()
    read(indices)
    wall += time.perf_counter() - t0
    cpu += time.process_time() - c0
  n = batches * batch_size
  return 1e6 * wall / n, 1e6 * cpu / n


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=60)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "results"))
  args = parser.parse_args()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("jest", "method=iid")
  records = input_pipeline.open_records(config.data, "train")
  builder = tfds.builder_from_directory(records.dataset_dir)
  instructions = builder.info.splits["train"].file_instructions
  tfds_source = builder.as_data_source(
      split="train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  readers = {
      "tfds": lambda indices: list(tfds_source.__getitems__(indices)),
      "array_record batched": batched_array_record(instructions),
      "RecordFiles": record_files.RecordFiles(instructions).__getitems__,
  }
  check = list(range(0, 100_000, 997))
  expected = readers["tfds"](check)
  assert all(read(check) == expected for read in readers.values())

  rows = []
  for batch_size in (64, 320):
    for name, read in readers.items():
      # Interleaved repeats would share drift; the best is the least
      # disturbed.
      runs = [per_record(read, args.batches, batch_size)
              for _ in range(args.repeats)]
      wall, cpu = min(runs, key=lambda r: r[1])
      rows.append(dict(reader=name, batch=batch_size, wall_us=wall,
                       cpu_us=cpu))
  base = {r["batch"]: r for r in rows if r["reader"] == "RecordFiles"}
  table = ["| batch | reader | wall µs / record | CPU µs / record | "
           "CPU vs RecordFiles |", "|" + "---|" * 5]
  for r in rows:
    table.append(f"| {r['batch']} | {r['reader']} | {r['wall_us']:.1f} | "
                 f"{r['cpu_us']:.1f} | "
                 f"{r['cpu_us'] / base[r['batch']]['cpu_us']:.2f}× |")
  command = "python " + " ".join(sys.argv)
  out = dict(command=command, machine=machine(), batches=args.batches,
             repeats=args.repeats, rows=rows, table=table)
  write_json(args.out, "record_reads", out)
  print(f"command: {command}\nmachine: {out['machine']}\n")
  print("\n".join(table))


if __name__ == "__main__":
  main()
