"""Test session setup: 8 simulated CPU devices, set before JAX starts."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same small programs (each run of the trainer builds
# fresh jitted closures); a persistent compilation cache shared by the test
# processes compiles each program once per session.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"jest_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Imported after the environment above is set (they import JAX).
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
from etils.epath import testing as epath_testing  # pylint: disable=g-import-not-at-top,wrong-import-position

@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Serves `gs://` paths through etils.epath from a local folder, refusing
  what an object store cannot do for jest_jax: append, rename a directory.

  Code that bypasses epath for a `gs://` path either fails or leaves a `gs:`
  folder in the working directory, which is checked at the end.
  """
  root = tmp_path / "bucket_root"
  root.mkdir()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)

  def local(path):
    path = os.fspath(path)
    return str(root / path.removeprefix("gs://")) if path.startswith(
        "gs://") else path

  def through(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def open_(original, path, mode):
    if os.fspath(path).startswith("gs://") and ("a" in mode or "+" in mode):
      raise OSError(f"object stores cannot open {path} in mode {mode!r}")
    return original(local(path), mode)

  def move(original, path, dst):
    if os.fspath(path).startswith("gs://") and os.path.isdir(local(path)):
      raise OSError(f"object stores cannot rename the directory {path}")
    return original(local(path), local(dst))

  names = ("exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "rmtree",
           "remove", "stat")
  with epath_testing.mock_epath(open=open_, rename=move, replace=move,
                                **{name: through for name in names}):
    yield root
  assert not os.listdir(cwd), "a gs:// path was used without epath"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """A 4-step reference trained and cached through the two CLIs, at the
  tiny settings of `test_train.TINY`; `(workdir, cache_dir)`. Once per test
  process: the trainer and multi-host tests only read it."""
  from test_train import TINY, run_cli  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("reference"))
  overrides = [f"--config.{item}" for item in TINY]
  result = run_cli("jest_jax.main", "--config", "configs/reference.py:steps=4",
                   *overrides, "--workdir", workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_cli("jest_jax.cache_reference", "--workdir", workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, os.path.join(workdir, "embeddings", "train")
