"""Reference-cache read rate per host: rows/s and MB/s of `ReferenceCache.read`.

  python benchmarks/reference_cache.py [--count 1000000] [--dim 768]
      [--dtype bfloat16] [--batches 4096 320] [--seconds 3]

Writes a cache of `count` random rows to a temporary local directory (read
memory-mapped, as on a host's local disk), then times `read` of batches of
uniformly random record indices, the access pattern of training (each batch
a fresh draw, sorted and coalesced inside `read`, checksums verified). The
first pass over the file comes from the page cache once written; a cache
larger than the host's memory is bounded by the disk's random-read rate
instead. Also times `verify_all` (a full content check) and the per-row
checksum alone. Prints a table and writes
benchmarks/results/reference_cache.json.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from common import machine
from common import write_json
from jest_jax import reference_cache


def rate(fn, seconds):
  """Calls per second of `fn()` over about `seconds` (after one warm-up)."""
  fn()
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn()
    calls += 1
  return calls / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--count", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batches", type=int, nargs="+", default=[320, 4096])
  parser.add_argument("--seconds", type=float, default=3.0)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"))
  args = parser.parse_args()
  scratch = tempfile.mkdtemp(prefix="jest_jax_cache_bench_")
  try:
    path = os.path.join(scratch, "cache")
    rng = np.random.default_rng(0)
    build = reference_cache.CacheBuilder(
        path, count=args.count, chunk_size=65536,
        identity=dict(dataset_fingerprint="bench", checkpoint_fingerprint="x",
                      dtype=args.dtype))
    t0 = time.perf_counter()
    for start, stop in build.chunks:
      image, text = rng.standard_normal(
          (2, stop - start, args.dim), dtype=np.float32)
      build.write_chunk(start, image, text)
    manifest = build.finish(temperature=10.0, bias=-10.0, checkpoint_step=0,
                            model={})
    write_seconds = time.perf_counter() - t0
    cache = reference_cache.open_cache(
        path, dataset_fingerprint="bench", count=args.count, verify_all=False)
    row_bytes = cache.layout.row_bytes
    results = dict(settings=vars(args), machine=machine(),
                   cache_bytes=sum(s["bytes"] for s in manifest["shards"]),
                   shards=len(manifest["shards"]), row_bytes=row_bytes,
                   build_rows_per_s=args.count / write_seconds, reads={})
    print(f"cache: {args.count:,} rows x d={args.dim} {args.dtype}, "
          f"{results['cache_bytes'] / 2**30:.2f} GiB in {results['shards']} "
          f"shards ({row_bytes} B per row)")
    print(f"{'batch':>6} {'rows/s':>12} {'MB/s':>8} {'ms/batch':>9} "
          f"{'checksum ms':>12}")
    for batch in args.batches:
      draws = [rng.integers(0, args.count, batch) for _ in range(64)]
      turn = iter(range(10**9))
      per_s = rate(lambda: cache.read(draws[next(turn) % 64]), args.seconds)
      rows = cache.rows(draws[0])
      check = rate(lambda: cache.layout.checksums(rows, draws[0]),
                   args.seconds / 3)
      results["reads"][str(batch)] = dict(
          rows_per_s=per_s * batch, mb_per_s=per_s * batch * row_bytes / 1e6,
          ms_per_batch=1e3 / per_s, checksum_ms_per_batch=1e3 / check)
      r = results["reads"][str(batch)]
      print(f"{batch:>6} {r['rows_per_s']:>12,.0f} {r['mb_per_s']:>8,.0f} "
            f"{r['ms_per_batch']:>9.2f} {r['checksum_ms_per_batch']:>12.2f}")
    t0 = time.perf_counter()
    cache.verify_all()
    seconds = results["verify_all_seconds"] = time.perf_counter() - t0
    print(f"verify_all: {seconds:.2f} s "
          f"({results['cache_bytes'] / 1e6 / seconds:,.0f} MB/s)")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  print(f"wrote {write_json(args.out, 'reference_cache', results)}")


if __name__ == "__main__":
  main()
