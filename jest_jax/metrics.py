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

import contextlib
import json
import logging as std_logging
import math
import os
import sys
import time

from absl import logging
from etils import epath

from jest_jax.paths import is_local


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
    self.kept = []  # The rows kept from earlier processes (lead only).
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._local = is_local(workdir)
    self._tb = None
    if not enabled:
      return
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    rows = read_metrics(workdir)
    self._rows = [row for row in rows if row["step"] <= resume_step]
    self.kept = list(self._rows)
    if self._local:
      # Rewritten only to drop rows past the checkpoint (the run
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
  """The progress line a person reads: `step, loss, examples/s, ETA`.

  On a terminal (stdout a TTY) one line is rewritten in place (`\r`);
  otherwise (pipes, files, notebooks) each update is a plain line. The same
  text also goes to the log (`cli_logging` sends it to the workdir's file).
  """

  def __init__(self, total_steps, first_step, examples_per_step, name="",
               enabled=True, stream=None):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.name = name
    self.enabled = enabled
    self._stream = stream or sys.stdout
    self._tty = self._stream.isatty() if hasattr(self._stream,
                                                 "isatty") else False
    self._open_line = 0  # Length of the `\r` line on screen (TTY only).
    self._t0 = time.perf_counter()
    self._step0 = first_step

  def restart(self, step):
    """Counts from `step` on."""
    self._t0 = time.perf_counter()
    self._step0 = step

  def exclude(self, seconds):
    """Leaves `seconds` (evals, checkpoints) out of the training rates."""
    self._t0 += seconds

  @contextlib.contextmanager
  def excluded(self):
    """Leaves the time inside the block out of the training rates."""
    t = time.perf_counter()
    try:
      yield
    finally:
      self.exclude(time.perf_counter() - t)

  def rate(self, step):
    """(steps/s, examples/s) since the first step of this process."""
    elapsed = time.perf_counter() - self._t0
    steps = max(step - self._step0, 0)
    steps_per_s = steps / elapsed if elapsed > 0 else 0.0
    return steps_per_s, steps_per_s * self.examples_per_step

  def log(self, step, loss):
    """Shows the progress line; returns (examples/s, seconds per step)."""
    steps_per_s, examples_per_s = self.rate(step)
    remaining = self.total_steps - step
    eta = remaining / steps_per_s if steps_per_s > 0 else float("nan")
    text = (f"{self.name + ' ' if self.name else ''}step {step}/"
            f"{self.total_steps} | loss {loss:.4f} | {examples_per_s:.0f} "
            f"examples/s | ETA {_format_seconds(eta)}")
    logging.info("%s", text)
    self._show(text, final=False)
    return examples_per_s, (1.0 / steps_per_s if steps_per_s else float("nan"))

  def eval(self, step, results):
    """Shows the evaluation results of `step` on their own line."""
    text = (f"{self.name + ' ' if self.name else ''}step {step} eval "
            + " ".join(f"{k.removeprefix('eval/')} {v:.4f}"
                       for k, v in sorted(results.items())))
    logging.info("%s", text)
    self._show(text, final=True)

  def close(self):
    """Ends the `\r` line (TTY) so that later output starts on its own."""
    if self.enabled and self._open_line:
      self._stream.write("\n")
      self._stream.flush()
      self._open_line = 0

  def _show(self, text, final):
    if not self.enabled:
      return
    if self._tty:
      pad = " " * max(self._open_line - len(text), 0)
      self._stream.write("\r" + text + pad + ("\n" if final else ""))
      self._open_line = 0 if final else len(text)
    else:
      self._stream.write(text + "\n")
    self._stream.flush()


def _format_seconds(seconds):
  if not math.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes}m{seconds:02d}s"


class _OwnInfoOnly:
  """Passes jest_jax's INFO lines and every library's warnings and errors."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or "jest_jax" in record.pathname)


def quiet_library_logs():
  """Silences libraries' INFO chatter (orbax logs every checkpoint file)."""
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  logging.set_verbosity(logging.INFO)


def cli_logging():
  """Command-line output: the terminal shows the progress line (stdout) and
  warnings and errors (stderr); the structured log goes to a file in the
  workdir once the run holds it (`file_log`)."""
  quiet_library_logs()
  logging.get_absl_handler().setLevel(std_logging.WARNING)


@contextlib.contextmanager
def file_log(log_path):
  """Within the block, jest_jax's INFO lines and every library's warnings,
  absl-formatted, are appended to `log_path` (skipped for an object-store
  path, which cannot append; None: no file)."""
  if log_path is None or not is_local(log_path):
    yield
    return
  handler = std_logging.FileHandler(log_path)
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(_OwnInfoOnly())
  std_logging.getLogger().addHandler(handler)
  try:
    yield
  finally:
    std_logging.getLogger().removeHandler(handler)
    handler.close()
