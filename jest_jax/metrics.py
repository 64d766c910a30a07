"""Metrics: `WORKDIR/metrics.jsonl` (one JSON object per logged step),
TensorBoard summaries (tensorboardX) and the progress line.

On resume, lines past the restored checkpoint's step are dropped (they belong
to steps that will be redone), by writing a new file and renaming it over the
old one, so the file is never left half-written.
"""

import json
import math
import os
import time

from absl import logging


def read_metrics(workdir):
  """All logged rows of a run, in order (a list of dicts)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Writes one JSON line per logged step; only the lead process writes."""

  def __init__(self, workdir, *, resume_step=0, enabled=True,
               tensorboard=True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    kept = [row for row in read_metrics(workdir) if row["step"] <= resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for row in kept:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, self.path)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # Import is slow; only if used.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=resume_step + 1)

  def write(self, step, scalars):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, step)

  def close(self):
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


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
