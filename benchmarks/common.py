"""What every benchmark reports about where it ran."""

import os
import platform

import jax


def machine():
  """CPU model, cores, platform, jax version, devices and load average."""
  cpu = "unknown"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  return dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(),
              jax=jax.__version__, devices=str(jax.devices()),
              load_average=os.getloadavg())


def write_json(out_dir, name, results):
  """Writes `results` to `out_dir/name.json` (sorted keys); returns the
  path."""
  import json  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  return path
