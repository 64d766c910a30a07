"""Which accelerator a machine has, the jax build for it, and demo settings.

Used by notebooks/jest_demo.ipynb (Colab: CPU, GPU or TPU runtime), before
and after JAX starts:

  kind = runtime.detect()                      # "tpu", "gpu" or "cpu"; no JAX
  requirement = runtime.jax_requirement(kind)  # "jax[tpu]==0.10.2" or None
  ...pip install it, then import jax...
  settings = runtime.demo_settings(jax.devices())

`detect` looks only at the environment and device files, so it runs before
an accelerator build of jax is installed. `demo_settings` sizes the demo for
the devices JAX reports: the CPU defaults are the notebook's few-minute run;
on accelerators a larger model, a batch that grows with the number of chips
(the trainer's mesh always spans every local device) and more steps.
"""

import dataclasses
import os
import re
import shutil

_LOCK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "requirements.lock")

# Device files and variables that say "this machine has a TPU / an NVIDIA
# GPU": Cloud TPU VMs (and Colab's TPU runtime) expose /dev/accel* or
# /dev/vfio, older Colab TPU runtimes set COLAB_TPU_ADDR; NVIDIA drivers
# create /dev/nvidia0 and install nvidia-smi.
_TPU_VARIABLES = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")
_TPU_FILES = ("/dev/accel0", "/dev/vfio/0")
_GPU_FILES = ("/dev/nvidia0",)


def detect(environ=None, exists=os.path.exists, which=shutil.which):
  """"tpu", "gpu" or "cpu", from the environment alone (JAX not imported)."""
  environ = os.environ if environ is None else environ
  if any(environ.get(v) for v in _TPU_VARIABLES) or any(
      exists(f) for f in _TPU_FILES):
    return "tpu"
  if any(exists(f) for f in _GPU_FILES) or which("nvidia-smi"):
    return "gpu"
  return "cpu"


def locked_version(package, lock=_LOCK):
  """`package`'s pinned version in requirements.lock; the installed version
  where there is no lock file (an install from a wheel, not a checkout)."""
  if not os.path.exists(lock):
    import importlib.metadata  # pylint: disable=g-import-not-at-top
    return importlib.metadata.version(package)
  with open(lock) as f:
    for line in f:
      match = re.match(rf"{re.escape(package)}==([^\s;#]+)", line.strip())
      if match:
        return match.group(1)
  raise ValueError(f"{lock} pins no version of {package}")


def jax_requirement(kind, lock=_LOCK):
  """The pip requirement of the accelerator jax build at the lock's version
  (None on CPU: the lock's jax is already the CPU build)."""
  extras = {"tpu": "tpu", "gpu": "cuda12"}
  if kind == "cpu":
    return None
  if kind not in extras:
    raise ValueError(f"unknown accelerator kind {kind!r}: tpu, gpu or cpu")
  return f"jax[{extras[kind]}]=={locked_version('jax', lock)}"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  """What the notebook's run uses; `overrides` apply to every run."""
  platform: str
  devices: int
  steps: int
  reference_steps: int
  eval_every: int
  overrides: tuple


def demo_settings(devices):
  """Settings sized for `devices` (jax.devices()).

  CPU: the pico model on a 20k-pair corpus, a few minutes on a Colab CPU.
  GPU / TPU: a Ti/4 image tower (64 tokens at 32 px) and a 4-layer Ti text
  tower on the full 100k-pair corpus, 128 trained examples per chip (the
  super-batch is 5x that at f = 0.8), 1,500 learner steps.
  """
  platform, count = devices[0].platform, len(devices)
  if platform == "cpu":
    return DemoSettings(
        platform, count, steps=300, reference_steps=400, eval_every=50,
        overrides=("data.n_train=20000", "data.n_curated=8000",
                   "log_every=10", "optim.warmup_steps=20"))
  return DemoSettings(
      platform, count, steps=1500, reference_steps=2000, eval_every=250,
      overrides=(f"batch_size={128 * count}", "model.image.variant=Ti/4",
                 "model.text.variant=Ti", "model.text.depth=4",
                 "model.out_dim=192", "model.dtype=bfloat16",
                 f"eval.batch_size={256 * count}", "log_every=50",
                 "optim.warmup_steps=100"))
