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
