"""Where a train step's time goes: score, select, update, and the whole step,
for IID, JEST and Flexi-JEST at the demo configuration, timed side by side.

  python benchmarks/step_phases.py [--iters 30]

Each phase is the trainer's own function (train.StepFunctions), jitted
alone; the rows of one table are timed interleaved (round-robin, median of
`--iters` rounds) so machine load hits them alike. Inputs are synthetic
(random images and tokens, random unit reference embeddings): timing does
not depend on their values. Writes benchmarks/results/step_phases.json.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from common import machine
from jest_jax import config_lib
from jest_jax import optim
from jest_jax import sharding
from jest_jax import train

_ITERS = flags.DEFINE_integer("iters", 30, "Timed rounds.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__),
                                               "results"), "Output directory.")

VOCAB = 61
# (table, config file, method argument)
SETUPS = [
    ("patch 8 (demo)", "jest", "method=iid"),
    ("patch 8 (demo)", "jest", "method=jest"),
    ("patch 8 (demo)", "jest", "method=flexi_jest"),
    ("patch 4/8", "flexi_jest", "method=iid"),
    ("patch 4/8", "flexi_jest", "method=jest"),
    ("patch 4/8", "flexi_jest", "method=flexi_jest"),
]


def build(config_name, arg):
  config = config_lib.load_config(config_name, arg)
  config.reference.cache_dir = "synthetic"
  model = train.build_model(config, VOCAB)
  optimizer, _ = optim.make_optimizer(config.optim, config.total_steps)
  mesh = sharding.make_mesh(1)
  state = train.init_state(model, optimizer, config, mesh,
                           (32, 32, 3), config.data.max_tokens)
  functions = train.StepFunctions(model, optimizer, config, mesh)
  rng = np.random.default_rng(0)
  n = config_lib.super_batch_size(config)
  super_batch = {
      "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "tokens": rng.integers(3, VOCAB, (n, config.data.max_tokens),
                             dtype=np.int32),
      "corrupt": np.zeros(n, bool)}
  reference = None
  if config_lib.needs_reference(config):
    emb = rng.normal(size=(2, n, config.model.out_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    reference = dict(image=emb[0], text=emb[1], temperature=np.float32(30.0),
                     bias=np.float32(-10.0))
  key = jax.random.key(0)
  b = config.batch_size
  sub_batch = jax.tree.map(lambda x: x[:b], super_batch)
  calls = {}
  step = jax.jit(functions.step)
  calls["step"] = lambda: step(state, super_batch, reference, key)
  update = jax.jit(functions.update)
  calls["update"] = lambda: update(state, sub_batch, key)
  if functions.selecting:
    score = jax.jit(functions.score)
    learner = score(state.params, super_batch)
    select = jax.jit(functions.select)
    ref = None if reference is None else train.selection.Embeddings(
        **reference)
    calls["score"] = lambda: score(state.params, super_batch)
    calls["select"] = lambda: select(key, learner, ref)
  for call in calls.values():  # Compile and warm up.
    jax.block_until_ready(call())
  return config, calls


def main(argv):
  del argv
  built = {(table, f"{config}:{arg}"): build(config, arg)
           for table, config, arg in SETUPS}
  times = {name: {phase: [] for phase in calls}
           for name, (_, calls) in built.items()}
  for _ in range(_ITERS.value):
    for name, (_, calls) in built.items():
      for phase, call in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times[name][phase].append(time.perf_counter() - t0)

  rows, lines = [], []
  for table in dict.fromkeys(t for t, _, _ in SETUPS):
    lines += [f"\n{table}",
              "| run | step ms | / IID | score ms | select ms | update ms | "
              "select share of step |", "|" + "---|" * 7]
    iid_ms = None
    for (t, name), phases in times.items():
      if t != table:
        continue
      ms = {p: 1e3 * float(np.median(v)) for p, v in phases.items()}
      iid_ms = iid_ms or ms["step"]
      share = ms.get("select", 0.0) / ms["step"]
      rows.append(dict(table=table, run=name, ms=ms,
                       ratio_to_iid=ms["step"] / iid_ms, select_share=share))
      fmt = lambda p: f"{ms[p]:.1f}" if p in ms else "–"
      lines.append(f"| {name} | {ms['step']:.1f} | {ms['step'] / iid_ms:.2f} "
                   f"| {fmt('score')} | {fmt('select')} | {fmt('update')} | "
                   f"{100 * share:.1f}% |")
  command = "python " + " ".join(sys.argv)
  out = dict(command=command, machine=machine(), iters=_ITERS.value,
             rows=rows, table=lines)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "step_phases.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(f"command: {command}\nmachine: {out['machine']}")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
