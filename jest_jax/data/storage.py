"""Where prepared datasets live, and writing one safely.

Every dataset the pipeline reads is a TFDS dataset in ArrayRecord files:
`DATA_DIR/NAME/VERSION/` with `dataset_info.json`, `features.json`, the
`*.array_record-*` shards and, beside them, the SentencePiece model its
captions are tokenized with (`spm.model`, "stored with the data").

Writers (the built-in corpus, the folder converter) hold a file lock while
they generate, so two processes that need the same dataset (test workers,
the processes of one run) write it once; TFDS itself writes to a temporary
directory and renames it into place, so a dataset directory is complete
whenever it exists.
"""

import contextlib
import fcntl
import io
import os

from absl import logging
from etils import epath

import jest_jax

TOKENIZER_FILE = "spm.model"
ENV_DATA_DIR = "JEST_JAX_DATA_DIR"


def default_data_dir():
  """`$JEST_JAX_DATA_DIR`, else `data_cache/tfds` in a source checkout (git
  ignores it), else `~/.cache/jest_jax/tfds`."""
  if os.environ.get(ENV_DATA_DIR):
    return os.environ[ENV_DATA_DIR]
  root = os.path.dirname(os.path.dirname(os.path.abspath(jest_jax.__file__)))
  if os.path.exists(os.path.join(root, "pyproject.toml")):
    return os.path.join(root, "data_cache", "tfds")
  return os.path.join(os.path.expanduser("~"), ".cache", "jest_jax", "tfds")


def resolve_data_dir(data_dir):
  return os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))


@contextlib.contextmanager
def file_lock(path):
  """An exclusive lock for the block, on the local file `path`.

  The file exists only while the lock is held: the holder removes it before
  releasing, and a process that was waiting on the removed file sees that
  `path` is no longer the file it locked and tries again.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  while True:
    f = open(path, "a")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
      try:
        same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
    except BaseException:
      f.close()
      raise
    f.close()
  try:
    yield
  finally:
    try:
      os.remove(path)
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()


def write_bytes_atomically(path, data):
  """Writes the bytes `data` to a temporary file beside `path` and renames
  it to `path` (local or `gs://...`, through `etils.epath`), so `path` is
  never seen half-written (an object store copies the temporary object,
  which is as whole)."""
  path = epath.Path(path)
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  tmp.write_bytes(data)
  tmp.replace(path)


def prepare(builder, write_extras=None):
  """Generates `builder`'s ArrayRecord files once; returns its directory.

  Args:
    builder: a `tfds.core.GeneratorBasedBuilder` made with
      `file_format="array_record"`.
    write_extras: optional `fn(dataset_dir)` run once after generation, under
      the same lock (e.g. writes the tokenizer); it must write atomically.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset_dir = os.fspath(builder.data_path)
  done_marker = os.path.join(dataset_dir, ".jest_jax_complete")
  if os.path.exists(done_marker):
    return dataset_dir
  lock = os.path.join(os.path.dirname(dataset_dir),
                      f".{os.path.basename(dataset_dir)}.lock")
  with file_lock(lock):
    if os.path.exists(done_marker):
      return dataset_dir
    tfds.disable_progress_bar()
    # TFDS prints "Downloading and preparing dataset ..." even for a local
    # generator; nothing is downloaded, so say what really happens instead.
    logging.info("writing %s (ArrayRecord) to %s, once", builder.name,
                 dataset_dir)
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(file_format="array_record")
    if write_extras is not None:
      write_extras(dataset_dir)
    write_bytes_atomically(done_marker, b"")
  return dataset_dir
