"""Metrics: `WORKDIR/metrics.jsonl` (one JSON object per logged step),
TensorBoard summaries (tensorboardX) and the progress line.

WORKDIR may be local or an object store (`gs://...`, through `etils.epath`).
On resume, lines past the restored checkpoint's step are dropped (they belong
to steps that will be redone). Locally the kept lines are then written to a
new file renamed over the old one, so the file is never left half-written;
otherwise the file is only appended to. An object store has no append: there the writer
keeps the rows in memory and rewrites the whole object at each write (an
object is replaced whole when its upload completes, so readers never see it
half-written either).
"""

import json
import math
import os
import time

from absl import logging
from etils import epath


def is_local(path):
  """Whether `path` is on the local file system (not `gs://` and the like)."""
  return "://" not in os.fspath(path)


def read_metrics(workdir):
  """All logged rows of a run, in order (a list of dicts)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def _jsonl(rows):
  return "".join(json.dumps(row) + "\n" for row in rows)


class MetricWriter:
  """Writes one JSON line per logged step; only the lead process writes.

  Args:
    workdir: the run directory, local or `gs://...`.
    resume_step: rows after this step are dropped.
    enabled: False on processes other than the lead (writes nothing).
    tensorboard: also write TensorBoard summaries to `WORKDIR/tensorboard`.
      For a `gs://` WORKDIR tensorboardX needs the `google-cloud-storage`
      package (it uploads the event file itself, without TensorFlow); without
      it, summaries are off for that run (one warning says so) and
      metrics.jsonl still holds every row.
  """

  def __init__(self, workdir, *, resume_step=0, enabled=True,
               tensorboard=True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._local = is_local(workdir)
    self._tb = None
    if not enabled:
      return
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    rows = read_metrics(workdir)
    self._rows = [row for row in rows if row["step"] <= resume_step]
    if self._local:
      # [faults] Rewritten only to drop rows past the checkpoint (the run
      # holds the workdir lock, so no other writer has the file open).
      if len(self._rows) != len(rows) or not self.path.exists():
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(_jsonl(self._rows))
        tmp.replace(self.path)
      self._file = self.path.open("a")
      self._rows = None  # Appended to the file instead.
    else:
      self.path.write_text(_jsonl(self._rows))
    if tensorboard and _tensorboard_can_write(workdir):
      from tensorboardX import SummaryWriter  # Import is slow; only if used.
      self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"),
                               purge_step=resume_step + 1)

  def write(self, step, scalars):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in scalars.items()})
    if self._local:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    else:
      self._rows.append(row)
      self.path.write_text(_jsonl(self._rows))
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)

  def close(self):
    if self.enabled:
      if self._local:
        self._file.close()
      if self._tb is not None:
        self._tb.close()


def _tensorboard_can_write(workdir):
  """tensorboardX writes local folders itself, `gs://` with
  google-cloud-storage and `s3://` with boto3; anything else is refused here
  with one warning rather than failing the run."""
  if is_local(workdir):
    return True
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  scheme = os.fspath(workdir).split("://", 1)[0]
  enabled = {"gs": getattr(record_writer, "GCS_ENABLED", False),
             "s3": getattr(record_writer, "S3_ENABLED", False)}.get(scheme)
  if not enabled:
    logging.warning(
        "TensorBoard summaries are off for %s: tensorboardX cannot write "
        "%s:// here (for gs:// install google-cloud-storage); metrics.jsonl "
        "has every row", workdir, scheme)
  return bool(enabled)


def _to_python(value):
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN; keep it visible rather than invalid.
  return value


class Progress:
  """Logs `step, loss, examples/s, ETA` at most every `every` steps."""

  def __init__(self, total_steps, first_step, examples_per_step, name=""):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.name = name
    self._t0 = time.perf_counter()
    self._step0 = first_step

  def restart(self, step):
    """Counts from `step` on (call after the first, compiling, step)."""
    self._t0 = time.perf_counter()
    self._step0 = step

  def exclude(self, seconds):
    """Leaves `seconds` (evals, checkpoints) out of the training rates."""
    self._t0 += seconds

  def rate(self, step):
    """(steps/s, examples/s) since the first step of this process."""
    elapsed = time.perf_counter() - self._t0
    steps = max(step - self._step0, 0)
    steps_per_s = steps / elapsed if elapsed > 0 else 0.0
    return steps_per_s, steps_per_s * self.examples_per_step

  def log(self, step, loss):
    """Logs the progress line; returns (examples/s, seconds per step)."""
    steps_per_s, examples_per_s = self.rate(step)
    remaining = self.total_steps - step
    eta = remaining / steps_per_s if steps_per_s > 0 else float("nan")
    logging.info("%s step %d/%d | loss %.4f | %.0f examples/s | ETA %s",
                 self.name, step, self.total_steps, loss, examples_per_s,
                 _format_seconds(eta))
    return examples_per_s, (1.0 / steps_per_s if steps_per_s else float("nan"))


def _format_seconds(seconds):
  if not math.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes}m{seconds:02d}s"


class _OwnInfoOnly:
  """Passes jest_jax's INFO lines and every library's warnings and errors."""

  def filter(self, record):
    import logging as std_logging
    return (record.levelno >= std_logging.WARNING
            or "jest_jax" in record.pathname)


def quiet_library_logs():
  """Silences libraries' INFO chatter (orbax logs every checkpoint file)."""
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  logging.set_verbosity(logging.INFO)
