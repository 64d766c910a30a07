"""The training loop's wall time per step against the compiled step alone.

  python benchmarks/loop_overhead.py --reference_dir runs/demo/reference

For IID and JEST at the demo configuration (configs/jest.py), in one process
and one after the other on the same machine:

- `loop`: the real `train.train_and_evaluate` (input pipeline, reference
  join, host->device transfer, metrics, guard), evals and checkpoints off;
  steady-state seconds per step between two log steps, so start-up and
  compilation are left out;
- `compiled`: the same compiled step, dispatched back to back on one batch
  already on the device (what the loop would cost if the host were free);
  measured right before and right after each loop run and averaged, so a
  drift of the machine's speed mostly cancels; `--repeats` such rounds,
  the median ratio reported and every round's listed;
- `host`: the input side alone (`train.device_batch` for consecutive steps:
  grain read and decode, reference join, transfer), nothing else running,
  also before and after.

`loop / compiled` is the loop's overhead: 1.0 means the host is hidden
behind the step. On a CPU backend the "device" is the same cores the input
pipeline runs on, so host work that an accelerator would overlap completely
here competes with the step for cores; the `host` column says how much
there is. Two settings, each in its own process (XLA flags are read when
JAX starts): `xla threads: all` (XLA's default, the step uses every core)
and `xla threads: 1` (`--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`: the step leaves a core to the host, the
nearest a CPU gets to a host beside an accelerator). Prints a table and
writes benchmarks/results/loop_overhead.json.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # pylint: disable=g-import-not-at-top,wrong-import-position

from jest_jax import cache_reference  # pylint: disable=g-import-not-at-top,wrong-import-position
from jest_jax import config_lib  # pylint: disable=wrong-import-position
from jest_jax import input_pipeline  # pylint: disable=wrong-import-position
from jest_jax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from jest_jax import optim  # pylint: disable=wrong-import-position
from jest_jax import sharding  # pylint: disable=wrong-import-position
from jest_jax import train  # pylint: disable=wrong-import-position

_REFERENCE_DIR = flags.DEFINE_string("reference_dir", None,
                                     "A finished reference run (its cache "
                                     "of the training split is built if "
                                     "missing).")
_METHODS = flags.DEFINE_list("methods", ["iid", "jest"],
                             "configs/jest.py methods.")
_STEPS = flags.DEFINE_integer("steps", 400, "Loop steps per run.")
_WARMUP = flags.DEFINE_integer("warmup", 100, "Loop steps left out of the "
                               "steady-state rate.")
_ITERS = flags.DEFINE_integer("iters", 100, "Compiled / host timing "
                             "iterations around each loop run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds (compiled, loop, "
                                "compiled) per method; the median counts.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "config.data.num_workers: 0 loads in threads of the "
    "training process, N in N worker processes.")
_CHILD = flags.DEFINE_string("child", "", "Internal: measure here, print "
                             "JSON rows.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__),
                                               "results"), "Output directory.")


def demo_config(method, steps, cache_dir):
  config = config_lib.load_config("jest", f"method={method},steps={steps},"
                                  "seed=0")
  config.eval_every = config.checkpoint_every = 10 * steps
  config.log_every = 50
  config.data.num_workers = _NUM_WORKERS.value
  if config_lib.needs_reference(config):
    config.reference.cache_dir = cache_dir
  return config


def loop_seconds(config, warmup):
  """Steady-state seconds per step of the real loop, from its log rows:
  `train/step_seconds` is the mean since the process's first step, so two
  rows give the mean between them."""
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    rows = [r for r in metrics_lib.read_metrics(workdir)
            if "train/step_seconds" in r]
  first = min((r for r in rows if r["step"] >= warmup),
              key=lambda r: r["step"])
  last = max(rows, key=lambda r: r["step"])
  return ((last["step"] * last["train/step_seconds"]
           - first["step"] * first["train/step_seconds"])
          / (last["step"] - first["step"]))


def compiled_and_host_timers(config):
  """`(compiled(iters), host(iters), close)`: seconds per step of the
  compiled step back to back on one device batch, and of host batches
  alone (consecutive steps), each callable again so they can be measured on
  both sides of the loop."""
  mesh = sharding.make_mesh(config.mesh.num_devices, config.mesh.get("fsdp", 1))
  reference = train.load_reference(config)
  train_input = input_pipeline.TrainInput(
      config.data, config.data.split, config_lib.super_batch_size(config),
      config.seed, reference=reference)
  tokenizer = input_pipeline.tokenizer(config.data)
  model = train.build_model(config, tokenizer.vocab_size)
  optimizer, _ = optim.make_optimizer(config.optim, config.total_steps)
  state = train.init_state(model, optimizer, config, mesh,
                           train_input.image_shape, config.data.max_tokens)
  functions = train.StepFunctions(model, optimizer, config, mesh)
  super_batch, ref_batch = train.device_batch(train_input, 1, mesh)
  key = jax.random.key(0)
  step = functions.jit_step().lower(state, super_batch, ref_batch,
                                    key).compile()
  held = {"state": state, "next_step": 2}

  def compiled(iters):
    state = held["state"]
    for _ in range(5):  # Warm up.
      state, metrics = step(state, super_batch, ref_batch, key)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(iters):
      state, metrics = step(state, super_batch, ref_batch, key)
    jax.block_until_ready((state, metrics))
    held["state"] = state
    return (time.perf_counter() - t0) / iters

  def host(iters):
    first = held["next_step"]
    for s in range(first, first + 10):  # (Re)start prefetching, warm up.
      jax.block_until_ready(train.device_batch(train_input, s, mesh))
    t0 = time.perf_counter()
    for s in range(first + 10, first + 10 + iters):
      jax.block_until_ready(train.device_batch(train_input, s, mesh))
    held["next_step"] = first + 10 + iters
    return (time.perf_counter() - t0) / iters

  return compiled, host, train_input.close


SETTINGS = {"all": "", "1": "--xla_cpu_multi_thread_eigen=false "
                           "intra_op_parallelism_threads=1"}


def host_by_prefetch(config, batches):
  """{prefetch: (wall ms, process CPU ms)} per host batch
  (`train.device_batch`, consecutive steps) at `config.data.prefetch` 0
  (read in the calling thread), 1, 2 and 4 (grain threads)."""
  mesh = sharding.make_mesh(config.mesh.num_devices, config.mesh.get("fsdp", 1))
  reference = train.load_reference(config)
  out = {}
  for prefetch in (0, 1, 2, 4):
    config.data.prefetch = prefetch
    train_input = input_pipeline.TrainInput(
        config.data, config.data.split, config_lib.super_batch_size(config),
        config.seed, reference=reference)
    for s in range(1, 12):  # Start the iterator, warm up.
      jax.block_until_ready(train.device_batch(train_input, s, mesh))
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(12, 12 + batches):
      jax.block_until_ready(train.device_batch(train_input, s, mesh))
    out[prefetch] = (1e3 * (time.perf_counter() - t0) / batches,
                     1e3 * (time.process_time() - c0) / batches)
    train_input.close()
  return out


def steal_seconds():
  """CPU time the hypervisor gave to other guests so far (all cores,
  /proc/stat), or None where not reported."""
  try:
    with open("/proc/stat") as f:
      fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")
  except (OSError, IndexError, ValueError):
    return None


def measure(cache_dir):
  """Per method, `--repeats` rounds of: the compiled step, a fresh loop run,
  the compiled step again. Each round's ratio is its loop against the mean
  of the compiled step on its two sides (the VM's speed drifts by tens of
  percent within minutes; a round is about a minute); the row has the
  median round."""
  rows = []
  for method in _METHODS.value:
    config = demo_config(method, _STEPS.value, cache_dir)
    compiled, host, close = compiled_and_host_timers(config)
    half = max(1, _ITERS.value // 2)
    hosts, rounds = [host(half)], []
    steal = steal_seconds()
    for _ in range(_REPEATS.value):
      round_steal = steal_seconds()
      before = compiled(half)
      loop = loop_seconds(demo_config(method, _STEPS.value, cache_dir),
                          _WARMUP.value)
      after = compiled(half)
      rounds.append(dict(loop_ms=1e3 * loop, compiled_before_ms=1e3 * before,
                         compiled_after_ms=1e3 * after,
                         ratio=2 * loop / (before + after),
                         steal_seconds=(None if round_steal is None else
                                        steal_seconds() - round_steal)))
    hosts.append(host(half))
    if steal is not None:
      steal = steal_seconds() - steal
    close()
    by_prefetch = host_by_prefetch(demo_config(method, _STEPS.value,
                                               cache_dir), _ITERS.value)
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    rows.append(dict(
        method=method, xla_threads=_CHILD.value, loop_ms=median["loop_ms"],
        compiled_ms=(median["compiled_before_ms"]
                     + median["compiled_after_ms"]) / 2,
        host_ms=1e3 * float(np.mean(hosts)),
        loop_over_compiled=median["ratio"], rounds=rounds,
        steal_seconds=steal, host_by_prefetch=by_prefetch))
  return rows


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  cache_dir = None
  if any(m != "iid" for m in _METHODS.value):
    if not _REFERENCE_DIR.value:
      sys.exit("error: --reference_dir (a finished reference run) is required "
               "for selection methods")
    cache_dir, _ = cache_reference.build_cache(_REFERENCE_DIR.value, "train")
  if _CHILD.value:
    print("ROWS " + json.dumps(measure(cache_dir)))
    return
  rows = []
  for threads, xla_flags in SETTINGS.items():  # One after the other.
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                      + xla_flags).strip())
    child = subprocess.run(
        [sys.executable, __file__, f"--child={threads}",
         f"--reference_dir={_REFERENCE_DIR.value or ''}",
         f"--methods={','.join(_METHODS.value)}", f"--steps={_STEPS.value}",
         f"--warmup={_WARMUP.value}", f"--iters={_ITERS.value}",
         f"--repeats={_REPEATS.value}",
         f"--num_workers={_NUM_WORKERS.value}"],
        env=env, capture_output=True, text=True, check=False)
    lines = [l for l in child.stdout.splitlines() if l.startswith("ROWS ")]
    if child.returncode or not lines:
      sys.exit(f"error: the xla threads={threads} run failed:\n"
               f"{child.stderr[-3000:]}")
    rows += json.loads(lines[-1][5:])
  table = ["| method | xla threads | loop ms/step | compiled step ms | "
           "host batch ms | loop / compiled (median) | every round | "
           "VM steal s |", "|" + "---|" * 8]
  for r in rows:
    every = " ".join(f"{x['ratio']:.2f}" for x in r["rounds"])
    table.append(f"| {r['method']} | {r['xla_threads']} | {r['loop_ms']:.1f} | "
                 f"{r['compiled_ms']:.1f} | {r['host_ms']:.1f} | "
                 f"{r['loop_over_compiled']:.2f} | {every} | "
                 f"{r['steal_seconds'] or 0:.1f} |")
  table += ["", "Host batch alone by `config.data.prefetch` (wall / process "
            "CPU ms a batch):", "",
            "| method | xla threads | " + " | ".join(
                f"prefetch {p}" for p in (0, 1, 2, 4)) + " |",
            "|" + "---|" * 6]
  for r in rows:
    cells = " | ".join(f"{w:.1f} / {c:.1f}" for w, c in
                       (r["host_by_prefetch"][p] for p in sorted(
                           r["host_by_prefetch"], key=int)))
    table.append(f"| {r['method']} | {r['xla_threads']} | {cells} |")
  command = "python " + " ".join(sys.argv)
  out = dict(command=command, machine=machine(), steps=_STEPS.value,
             warmup=_WARMUP.value, iters=_ITERS.value,
             repeats=_REPEATS.value,
             num_workers=_NUM_WORKERS.value, settings=SETTINGS,
             rows=rows, table=table)
  write_json(_OUT.value, "loop_overhead", out)
  print(f"command: {command}\nmachine: {out['machine']}\n")
  print("\n".join(table))


if __name__ == "__main__":
  app.run(main)
