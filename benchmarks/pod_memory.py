"""Per-device memory of the real train step at the paper's per-chip shapes,
compiled (never run) on simulated CPU devices.

  python benchmarks/pod_memory.py [--devices 8,16] [--cases default]

Each row is `train.StepFunctions(...).jit_step()` of `configs/tpu_flexi_jest.py`
(ViT-B/16 + B text, 256px, 128 trained / 640 scored images per chip unless a
case says otherwise) lowered with abstract inputs and compiled; XLA's memory
analysis gives argument / output / temp / peak bytes per device
(`jest_jax/step_memory.py`). The global selection's `gather_selected` is also
compiled alone on the same super-batch so its share of the step can be told
apart (its temp grows with the number of devices). One subprocess per device
count: `--xla_force_host_platform_device_count` must be set before JAX
starts. Cases run one at a time (a B/16 compile takes tens of seconds and a
few GB of RAM). Writes benchmarks/results/pod_memory.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_list("devices", ["8", "16"], "Simulated devices.")
_CASES = flags.DEFINE_list("cases", ["default"], "Case names (see CASES), or "
                           "'default' / 'all'.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__),
                                               "results"), "Output directory.")
_CHILD = flags.DEFINE_string("child", "", "Internal: run these cases here.")

GiB = 2.0 ** 30
# name -> (method, image variant, text variant, per-chip trained, options)
NO_OPTIONS = dict(dtype="float32", remat=False, scan=False, fsdp=1)
MEMORY = dict(dtype="bfloat16", remat=True, scan=False, fsdp=1)
# The shipped tpu_* default: scanned, rematerialised layers, bf16.
SCANNED = dict(MEMORY, scan=True)
CASES = {
    "iid": ("iid", "B/16", "B", 128, NO_OPTIONS),
    "jest": ("jest", "B/16", "B", 128, NO_OPTIONS),
    "flexi_jest": ("flexi_jest", "B/16", "B", 128, NO_OPTIONS),
    "flexi_jest+remat": ("flexi_jest", "B/16", "B", 128,
                         dict(NO_OPTIONS, remat=True)),
    "flexi_jest+bf16": ("flexi_jest", "B/16", "B", 128,
                        dict(NO_OPTIONS, dtype="bfloat16")),
    "iid+remat+bf16": ("iid", "B/16", "B", 128, MEMORY),
    "jest+remat+bf16": ("jest", "B/16", "B", 128, MEMORY),
    "flexi_jest+remat+bf16": ("flexi_jest", "B/16", "B", 128, MEMORY),
    "flexi_jest+remat+bf16+fsdp2": ("flexi_jest", "B/16", "B", 128,
                                    dict(MEMORY, fsdp=2)),
    "iid+scan+remat+bf16": ("iid", "B/16", "B", 128, SCANNED),
    "jest+scan+remat+bf16": ("jest", "B/16", "B", 128, SCANNED),
    "flexi_jest+scan+remat+bf16": ("flexi_jest", "B/16", "B", 128, SCANNED),
    "L16 flexi_jest+scan+remat+bf16+fsdp8": ("flexi_jest", "L/16", "L", 128,
                                             dict(SCANNED, fsdp=8)),
    "L16 flexi_jest+remat+bf16": ("flexi_jest", "L/16", "L", 128, MEMORY),
    "L16 flexi_jest+remat+bf16+fsdp8": ("flexi_jest", "L/16", "L", 128,
                                        dict(MEMORY, fsdp=8)),
}
DEFAULT = ["iid", "jest", "flexi_jest", "flexi_jest+remat", "flexi_jest+bf16",
           "jest+remat+bf16", "flexi_jest+remat+bf16",
           "flexi_jest+remat+bf16+fsdp2", "iid+scan+remat+bf16",
           "jest+scan+remat+bf16", "flexi_jest+scan+remat+bf16",
           "L16 flexi_jest+scan+remat+bf16+fsdp8"]


def measure(name, devices):
  """One case on `devices` simulated devices: per-device bytes."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jest_jax import config_lib
  from jest_jax import optim
  from jest_jax import selection
  from jest_jax import sharding
  from jest_jax import step_memory
  from jest_jax import train

  method, image_variant, text_variant, per_chip, options = CASES[name]
  config = config_lib.load_config("tpu_flexi_jest", f"method={method},"
                            f"batch_size={per_chip * devices}")
  config.reference.cache_dir = "unused-here"
  config.model.image.variant = image_variant
  config.model.text.variant = text_variant
  config.model.dtype = options["dtype"]
  config.model.remat = options["remat"]
  config.model.scan = options["scan"]
  config.mesh.fsdp = options["fsdp"]
  if config.selection.kind != "uniform":
    config.selection.n_chunks = 16
  config_lib.validate(config, num_devices=devices)
  model = train.build_model(config, config.model.vocab_size_hint)
  optimizer, _ = optim.make_optimizer(config.optim, config.total_steps)
  mesh = sharding.make_mesh(devices, config.mesh.fsdp)
  functions = train.StepFunctions(model, optimizer, config, mesh)
  start = time.perf_counter()
  row = dict(case=name, method=method, devices=devices,
             trained_per_device=per_chip,
             scored_per_device=config_lib.super_batch_size(config) // devices,
             image=image_variant, **options)
  row.update({f"step_{k}_gib": v / GiB
              for k, v in step_memory.step_memory(functions).items()})
  if functions.selecting:
    inputs = step_memory.abstract_step_inputs(functions)
    super_batch = inputs[1]
    indices = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                   sharding=super_batch["tokens"].sharding)
    gather = jax.jit(lambda batch, idx: selection.gather_selected(
        batch, idx, mesh=mesh, axis_name=sharding.DATA_AXIS,
        scope=config.selection.scope))
    gathered = step_memory.memory(gather.lower(super_batch, indices).compile())
    row["gather_temp_gib"] = gathered["temp"] / GiB
  row["compile_seconds"] = time.perf_counter() - start
  return row


def child(names):
  rows = [measure(name, int(os.environ["POD_MEMORY_DEVICES"]))
          for name in names]
  print("ROWS " + json.dumps(rows))


def main(argv):
  del argv
  if _CHILD.value:
    child(_CHILD.value.split(";"))
    return
  names = {"default": DEFAULT, "all": list(CASES)}.get(
      _CASES.value[0], _CASES.value) if len(_CASES.value) == 1 else _CASES.value
  rows = []
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for devices in _DEVICES.value:
    for name in names:  # One compile per process: RAM is freed in between.
      env = dict(os.environ, JAX_PLATFORMS="cpu", POD_MEMORY_DEVICES=devices,
                 PYTHONPATH=root,
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
      result = subprocess.run(
          [sys.executable, __file__, f"--child={name}"], env=env,
          capture_output=True, text=True, check=False)
      line = [l for l in result.stdout.splitlines() if l.startswith("ROWS ")]
      if result.returncode or not line:
        print(f"{name} on {devices} devices failed:\n{result.stderr[-2000:]}")
        continue
      row = json.loads(line[0][5:])[0]
      rows.append(row)
      print(f"{row['case']:34s} D={devices:>3} b/D={row['trained_per_device']}"
            f" B/D={row['scored_per_device']:>4}  arg {row['step_argument_gib']:6.2f}"
            f"  out {row['step_output_gib']:6.2f}  temp {row['step_temp_gib']:7.2f}"
            f"  peak {row['step_peak_gib']:7.2f}  gather temp "
            f"{row.get('gather_temp_gib', 0.0):5.2f} GiB  "
            f"({row['compile_seconds']:.0f} s)", flush=True)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from common import machine  # pylint: disable=g-import-not-at-top
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "pod_memory.json")
  with open(path, "w") as f:
    json.dump(dict(machine=machine(), command=" ".join(sys.argv), rows=rows),
              f, indent=2)
  print("wrote", path)


if __name__ == "__main__":
  app.run(main)
