"""jest_jax.runtime: accelerator detection, the jax build to install, and
demo settings sized for the devices (valid configs on 8 devices)."""

import dataclasses

import jax
import pytest

from jest_jax import config_lib
from jest_jax import runtime
from jest_jax import train


def test_detect_reads_variables_and_device_files_only():
  none = dict(environ={}, exists=lambda f: False, which=lambda p: None)
  assert runtime.detect(**none) == "cpu"
  assert runtime.detect(**{**none, "environ": {"COLAB_TPU_ADDR": "10.0.0.2"}}
                        ) == "tpu"
  assert runtime.detect(**{**none, "exists": lambda f: f == "/dev/accel0"}
                        ) == "tpu"
  assert runtime.detect(**{**none, "exists": lambda f: f == "/dev/nvidia0"}
                        ) == "gpu"
  assert runtime.detect(**{**none, "which": lambda p: "/usr/bin/" + p}
                        ) == "gpu"
  # A TPU VM with NVIDIA tools around is still a TPU runtime.
  assert runtime.detect(environ={"TPU_NAME": "v5e"}, exists=lambda f: True,
                        which=lambda p: p) == "tpu"


def test_jax_requirement_pins_the_locks_version(tmp_path):
  lock = tmp_path / "requirements.lock"
  lock.write_text("jaxlib==0.9.1\njax==0.9.1 ; python_version >= '3.11'\n")
  assert runtime.jax_requirement("tpu", str(lock)) == "jax[tpu]==0.9.1"
  assert runtime.jax_requirement("gpu", str(lock)) == "jax[cuda12]==0.9.1"
  assert runtime.jax_requirement("cpu", str(lock)) is None
  # The project's own lock: the version this checkout runs with.
  assert runtime.jax_requirement("tpu") == f"jax[tpu]=={jax.__version__}"
  with pytest.raises(ValueError, match="unknown accelerator"):
    runtime.jax_requirement("ipu", str(lock))
  (tmp_path / "empty.lock").write_text("numpy==2.0\n")
  with pytest.raises(ValueError, match="pins no version of jax"):
    runtime.jax_requirement("tpu", str(tmp_path / "empty.lock"))


@dataclasses.dataclass
class FakeDevice:
  platform: str


@pytest.mark.parametrize("platform", ["cpu", "tpu", "gpu"])
def test_demo_settings_are_valid_configs_on_8_devices(platform):
  settings = runtime.demo_settings([FakeDevice(platform)] * 8)
  assert settings.devices == 8
  for name, arg in [("reference", f"steps={settings.reference_steps}"),
                    ("jest", f"method=jest,steps={settings.steps}")]:
    config = config_lib.apply_overrides(config_lib.load_config(name, arg),
                                        settings.overrides)
    config.reference.cache_dir = "cache"  # Named only; not read here.
    config_lib.validate(config, num_devices=8)
    if platform != "cpu":  # A larger model and 128 trained per chip.
      assert config.batch_size == 128 * 8
      assert config.model.image.variant != "pico/8"
    model = train.build_model(config, vocab_size=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), "float32"),
                            jax.ShapeDtypeStruct((1, 16), "int32"))
    assert shapes["params"]


def test_without_a_lock_file_the_installed_jax_version_is_used(tmp_path):
  missing = str(tmp_path / "requirements.lock")
  assert runtime.jax_requirement("tpu", lock=missing) == (
      f"jax[tpu]=={jax.__version__}")
