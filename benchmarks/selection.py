"""Matrix-free versus materialised joint selection: time, memory, FLOP rate.

  python benchmarks/selection.py            # default subset (~5-8 min, 2 cores)
  python benchmarks/selection.py --quick    # small sizes + the headline point
  python benchmarks/selection.py --full     # the whole grid (hours on 2 cores)

Prints a table and writes benchmarks/results/selection.json. Both kernels run
jitted, learnability scoring, sigmoid loss, on random unit embeddings (speed
does not depend on their values). Per point:

- median wall time of the compiled kernels (after a warm-up call; the
  matrix-free, materialised and reference-matmul calls alternate, so that
  load from other processes falls on all of them alike);
- memory from the compiled program's `memory_analysis()`: `temp` (working
  memory) and `total` = temp + arguments + outputs;
- matmul FLOPs counted analytically: matrix-free `8 B d c (n_chunks - 1)`
  (two models, both directions, a `B x c` block per chunk after the first),
  materialised `4 B^2 d` (two `B x B` logit matrices); achieved GFLOP/s =
  those FLOPs / time, against the measured rate of a batched matmul of the
  kernel's own block shape (`[2, B, d] x [2, c, d]`) in the same run;
- whether both kernels returned identical indices.

The materialised kernel is skipped where its `B x B` matrices would not fit
in this machine's available memory (stated in the output).

Also: the demo configuration's kernel time (B=320, b=64, d=64, 16 chunks),
for the kernel's share of a JEST step, and the cost of `refine_sweeps`.
Other processes may share the CPU: the load average is recorded.
"""

import argparse
import itertools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jest_jax import selection
from jest_jax.selection import materialised

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HEADLINE = dict(size=16384, ratio=0.8, dim=256, n_chunks=16)
FULL_GRID = dict(size=(1024, 4096, 16384, 65536), ratio=(0.5, 0.8, 0.9),
                 dim=(64, 256, 768), n_chunks=(1, 4, 16))


def sub_batch_size(size, ratio, multiple=16):
  """b = B (1 - f), rounded to a multiple of 16 (every n_chunks divides it)."""
  return max(multiple, int(round(size * (1 - ratio) / multiple)) * multiple)


def embeddings(key, size, dim):
  image_key, text_key = jax.random.split(key)
  unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)
  image = unit(jax.random.normal(image_key, (size, dim)))
  text = unit(image + 0.5 * unit(jax.random.normal(text_key, (size, dim))))
  return selection.Embeddings(image, text, jnp.float32(30.0),
                              jnp.float32(-10.0))


def _once(compiled, args):
  begin = time.perf_counter()
  out = compiled(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - begin, out


def _time_interleaved(calls, budget_s=60.0):
  """Median seconds of each `(compiled, args)`, run in turn, round-robin.

  Interleaving spreads load from other processes over all of them alike.
  Returns (medians, outputs of the warm-up calls).
  """
  warm = [_once(compiled, args) for compiled, args in calls]
  per_round = sum(seconds for seconds, _ in warm)
  rounds = int(np.clip(budget_s // max(per_round, 1e-9), 1, 5))
  times = [[] for _ in calls]
  for _ in range(rounds):
    for samples, (compiled, args) in zip(times, calls):
      samples.append(_once(compiled, args)[0])
  return [float(np.median(t)) for t in times], [out for _, out in warm]


def _compile(fn, *args):
  begin = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = time.perf_counter() - begin
  memory = compiled.memory_analysis()
  temp = int(memory.temp_size_in_bytes)
  total = temp + int(memory.argument_size_in_bytes) + int(
      memory.output_size_in_bytes)
  return compiled, seconds, temp, total


def block_matmul(size, dim, chunk):
  """The kernel's block matmul `[2, B, d] x [2, c, d]`, compiled, + args."""
  rows = jax.random.normal(jax.random.key(0), (2, size, dim))
  block = jax.random.normal(jax.random.key(1), (2, chunk, dim))
  fn = lambda a, b: jnp.einsum("snd,scd->snc", a, b,
                               precision=jax.lax.Precision.HIGHEST)
  return _compile(fn, rows, block)[0], (rows, block)


def available_bytes():
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable"):
        return int(line.split()[1]) * 1024
  return 0


def run_point(size, ratio, dim, n_chunks, *, refine_sweeps=0,
              with_materialised=True):
  sub = sub_batch_size(size, ratio)
  chunk = sub // n_chunks
  learner = embeddings(jax.random.key(1), size, dim)
  reference = embeddings(jax.random.key(2), size, dim)
  key = jax.random.key(0)
  row = dict(B=size, f=round(1 - sub / size, 4), b=sub, d=dim,
             n_chunks=n_chunks, refine_sweeps=refine_sweeps,
             load_average_1min=os.getloadavg()[0])

  free = lambda k, l, r: selection.joint_select(
      k, l, r, sub_batch_size=sub, n_chunks=n_chunks,
      refine_sweeps=refine_sweeps)
  args = (key, learner, reference)
  free_compiled, row["free_compile_s"], row["free_temp_bytes"], row[
      "free_total_bytes"] = _compile(free, *args)
  calls = [(free_compiled, args), block_matmul(size, dim, chunk)]

  # Two B x B f32 logit matrices and the score matrix live at once.
  need = 3 * 4 * size * size
  if not with_materialised:
    row["materialised"] = "not run (refinement has no materialised form)"
  elif need > 0.7 * available_bytes():
    row["materialised"] = (f"skipped: needs ~{need / 2**30:.0f} GiB for its "
                           f"B x B matrices, {available_bytes() / 2**30:.0f} "
                           "GiB available")
  else:
    dense = lambda k, l, r: materialised.joint_select(
        k, l, r, sub_batch_size=sub, n_chunks=n_chunks)
    dense_compiled, row["dense_compile_s"], row["dense_temp_bytes"], row[
        "dense_total_bytes"] = _compile(dense, *args)
    calls.append((dense_compiled, args))

  seconds, outputs = _time_interleaved(calls)
  row["free_s"], matmul_s = seconds[:2]
  # A refinement step redraws one chunk: one block (removal subtracts a
  # cached share).
  updates = n_chunks + refine_sweeps * n_chunks if refine_sweeps else (
      n_chunks - 1)
  row["free_gflop"] = 8 * size * dim * chunk * updates / 1e9
  row["free_gflops"] = row["free_gflop"] / row["free_s"]
  row["matmul_gflops"] = 2 * 2 * size * dim * chunk / matmul_s / 1e9
  row["free_fraction_of_matmul"] = row["free_gflops"] / row["matmul_gflops"]
  if len(calls) == 3:
    row["dense_s"] = seconds[2]
    row["dense_gflop"] = 4 * size * size * dim / 1e9
    row["dense_gflops"] = row["dense_gflop"] / row["dense_s"]
    row["speedup"] = row["dense_s"] / row["free_s"]
    row["memory_ratio"] = row["free_total_bytes"] / row["dense_total_bytes"]
    row["same_indices"] = bool(np.array_equal(np.asarray(outputs[0]),
                                              np.asarray(outputs[2])))
  row["load_average_1min_end"] = os.getloadavg()[0]
  return row


def default_points(quick):
  """(size, ratio, dim, n_chunks) tuples: one-factor sweeps around HEADLINE."""
  headline = tuple(HEADLINE.values())
  if quick:
    return [(1024, 0.8, 256, 16), (4096, 0.8, 256, 16), headline]
  points = [headline]
  for axis, values in (("size", FULL_GRID["size"]),
                       ("ratio", FULL_GRID["ratio"]),
                       ("dim", FULL_GRID["dim"]),
                       ("n_chunks", FULL_GRID["n_chunks"])):
    for value in values:
      point = tuple(dict(HEADLINE, **{axis: value}).values())
      if point not in points:
        points.append(point)
  return points


def _fmt_bytes(n):
  return f"{n / 2**20:9.1f}" if isinstance(n, (int, float)) else f"{'-':>9s}"


def print_table(rows):
  header = (f"{'B':>6s} {'f':>5s} {'b':>5s} {'d':>4s} {'n':>3s} {'R':>2s} | "
            f"{'free s':>7s} {'dense s':>7s} {'speedup':>7s} | "
            f"{'free MiB':>9s} {'dense MiB':>9s} {'ratio':>6s} | "
            f"{'GFLOP/s':>7s} {'matmul':>7s} {'frac':>5s} | same")
  print(header)
  print("-" * len(header))
  for r in rows:
    dense = r.get("dense_s")
    print(f"{r['B']:6d} {r['f']:5.3f} {r['b']:5d} {r['d']:4d} "
          f"{r['n_chunks']:3d} {r['refine_sweeps']:2d} | {r['free_s']:7.3f} "
          + (f"{dense:7.3f} {r['speedup']:7.2f}" if dense else
             f"{'-':>7s} {'-':>7s}")
          + f" | {_fmt_bytes(r['free_total_bytes'])} "
          f"{_fmt_bytes(r.get('dense_total_bytes'))} "
          + (f"{r['memory_ratio']:6.3f}" if dense else f"{'-':>6s}")
          + f" | {r['free_gflops']:7.1f} {r['matmul_gflops']:7.1f} "
          f"{r['free_fraction_of_matmul']:5.2f} | "
          + (str(r["same_indices"]) if dense else r["materialised"]))


def machine():
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()],
          "python": platform.python_version(),
          "memory_available_gib": round(available_bytes() / 2**30, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--full", action="store_true",
                      help="the whole B x f x d x n_chunks grid")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()

  result = {"command": "python benchmarks/selection.py" + (
      " --quick" if args.quick else " --full" if args.full else ""),
            "machine": machine(), "load_average_start": os.getloadavg()}
  print(json.dumps(result, indent=1))
  begin = time.time()
  points = (list(itertools.product(*FULL_GRID.values())) if args.full
            else default_points(args.quick))
  rows = []
  for point in points:
    rows.append(run_point(*point))
    print(f"  done {point}: {rows[-1]['free_s']:.3f} s matrix-free, "
          f"{rows[-1].get('dense_s', float('nan')):.3f} s materialised",
          flush=True)

  # Refinement cost at the headline point.
  refine = [run_point(*HEADLINE.values(), refine_sweeps=sweeps,
                      with_materialised=False)
            for sweeps in ((2,) if args.quick else (1, 2, 4))]
  # The demo configuration: b = 64 at f = 0.8, 64-d embeddings.
  demo = [run_point(320, 0.8, 64, 16, refine_sweeps=sweeps,
                    with_materialised=sweeps == 0) for sweeps in (0, 4)]
  rows_all = rows + refine + demo
  print()
  print_table(rows_all)
  headline = rows[points.index(tuple(HEADLINE.values()))]
  summary = {
      "headline_point": HEADLINE,
      "speedup_vs_materialised": headline.get("speedup"),
      "memory_ratio_vs_materialised": headline.get("memory_ratio"),
      "fraction_of_matmul_rate": headline["free_fraction_of_matmul"],
      "demo_kernel_ms": demo[0]["free_s"] * 1e3,
      "demo_kernel_ms_refine4": demo[1]["free_s"] * 1e3,
      "refine_cost_vs_pass": {r["refine_sweeps"]: r["free_s"] /
                              headline["free_s"] for r in refine},
      "notes": "speedup = materialised / matrix-free median wall time; "
               "memory ratio = matrix-free / materialised compiled total "
               "bytes; fraction = achieved matmul GFLOP/s / measured rate of "
               "the same block matmul.",
  }
  print("\nheadline (B=16384, f=0.8, d=256, 16 chunks):",
        json.dumps(summary, indent=1))
  result.update(rows=rows, refine=refine, demo=demo, summary=summary,
                load_average_end=os.getloadavg(),
                seconds=time.time() - begin)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "selection.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
