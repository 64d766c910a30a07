"""Where a path lives: the local file system or an object store."""

import os


def is_local(path):
  """Whether `path` is on the local file system (not `gs://` and the like)."""
  return "://" not in os.fspath(path)
