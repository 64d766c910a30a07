"""Per-device memory of the global gather, by number of devices (compiled).

  python benchmarks/selection_gather.py [--devices 4,8,16] [--per-device 128]
      [--pixels 256]

For each device count D, a subprocess (XLA_FLAGS must be set before JAX
starts) simulates D CPU devices, lowers `gather_selected(scope="global")`
with abstract inputs (`per-device` trained images of `pixels`^2 x 3 float32
per device, a super-batch 5 times larger) and prints XLA's
`memory_analysis()` per device: temp, output and the ratio temp / output
shard, which should stay flat in D. Writes
benchmarks/results/selection_gather.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def gather_memory(mesh, *, per_device, pixels, super_factor=5,
                  gather=None):
  """Compiled per-device bytes {temp, output, argument} of a global gather."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from jest_jax import selection  # pylint: disable=import-outside-toplevel

  gather = gather or selection.gather_selected
  shards = mesh.devices.size
  rows = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  sub = per_device * shards
  batch = {"image": jax.ShapeDtypeStruct(
      (super_factor * sub, pixels, pixels, 3), jnp.float32, sharding=rows)}
  indices = jax.ShapeDtypeStruct((sub,), jnp.int32, sharding=rows)
  compiled = jax.jit(lambda b, i: gather(b, i, mesh=mesh)).lower(
      batch, indices).compile()
  memory = compiled.memory_analysis()
  return {"temp": memory.temp_size_in_bytes,
          "output": memory.output_size_in_bytes,
          "argument": memory.argument_size_in_bytes}


def _child(devices, per_device, pixels):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()), ("data",))
  print(json.dumps(gather_memory(mesh, per_device=per_device, pixels=pixels)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="4,8,16")
  parser.add_argument("--per-device", type=int, default=128)
  parser.add_argument("--pixels", type=int, default=256)
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  if args.child:
    _child(args.child, args.per_device, args.pixels)
    return
  rows = []
  print("devices | temp MiB | output shard MiB | temp / output")
  for devices in map(int, args.devices.split(",")):
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(devices), "--per-device",
         str(args.per_device), "--pixels", str(args.pixels)],
        check=True, capture_output=True, text=True)
    row = dict(json.loads(done.stdout.strip().splitlines()[-1]),
               devices=devices)
    row["temp_over_output"] = row["temp"] / row["output"]
    rows.append(row)
    print(f"{devices:7d} | {row['temp'] / 2**20:8.1f} | "
          f"{row['output'] / 2**20:16.1f} | {row['temp_over_output']:.2f}",
          flush=True)
  result = {"command": "python benchmarks/selection_gather.py --devices "
                       f"{args.devices} --per-device {args.per_device} "
                       f"--pixels {args.pixels}",
            "machine": {"cores": os.cpu_count(),
                        "python": platform.python_version()},
            "per_device": args.per_device, "pixels": args.pixels,
            "dtype": "float32", "rows": rows}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "selection_gather.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
