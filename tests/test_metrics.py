"""metrics.jsonl is written, resumed and read the same on a local disk and in
an object store (`gs://`, through etils.epath), where nothing is appended."""

import json
import os

import numpy as np

from jest_jax import metrics as metrics_lib



def _rows(steps):
  return [(step, {"train/loss": np.float32(1.0 / step), "lr": 0.1})
          for step in steps]


def _write(workdir, rows, resume_step=0):
  writer = metrics_lib.MetricWriter(workdir, resume_step=resume_step,
                                    tensorboard=False)
  for step, scalars in rows:
    writer.write(step, scalars)
  return writer


def _expected(rows):
  return [{"step": step, "train/loss": float(np.float32(1.0 / step)),
           "lr": 0.1} for step, _ in rows]


def test_rows_are_readable_after_each_write_and_after_close(tmp_path):
  rows = _rows([1, 2, 3])
  writer = _write(str(tmp_path), rows[:2])
  assert metrics_lib.read_metrics(str(tmp_path)) == _expected(rows[:2])
  writer.write(*rows[2])
  writer.close()
  assert metrics_lib.read_metrics(str(tmp_path)) == _expected(rows)


def test_resume_drops_rows_after_the_restored_step_then_appends(tmp_path):
  _write(str(tmp_path), _rows([1, 2, 3, 4])).close()
  _write(str(tmp_path), _rows([3, 4, 5]), resume_step=2).close()
  assert metrics_lib.read_metrics(str(tmp_path)) == _expected(
      _rows([1, 2, 3, 4, 5]))


def test_non_finite_values_are_kept_as_strings(tmp_path):
  _write(str(tmp_path), [(1, {"loss": float("nan")})]).close()
  line = (tmp_path / "metrics.jsonl").read_text()
  assert json.loads(line) == {"step": 1, "loss": "nan"}


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "run").exists()
  assert metrics_lib.read_metrics(str(tmp_path / "run")) == []


def test_missing_metrics_read_as_no_rows(tmp_path):
  assert metrics_lib.read_metrics(str(tmp_path)) == []


def test_gcs_workdir_resumes_and_reads_like_a_local_one(fake_gcs, tmp_path):
  _write("gs://bucket/run", _rows([1, 2, 3, 4])).close()
  writer = _write("gs://bucket/run", _rows([3, 4]), resume_step=2)
  # Every write is visible at once, not only after close.
  assert metrics_lib.read_metrics("gs://bucket/run") == _expected(
      _rows([1, 2, 3, 4]))
  writer.write(*_rows([5])[0])
  writer.close()
  _write(str(tmp_path / "local"), _rows([1, 2, 3, 4])).close()
  _write(str(tmp_path / "local"), _rows([3, 4, 5]), resume_step=2).close()
  assert (metrics_lib.read_metrics("gs://bucket/run")
          == metrics_lib.read_metrics(str(tmp_path / "local"))
          == _expected(_rows([1, 2, 3, 4, 5])))
  assert (fake_gcs / "bucket" / "run" / "metrics.jsonl").exists()


def test_gcs_workdir_without_a_tensorboard_backend_turns_summaries_off(
    fake_gcs, monkeypatch, caplog):
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(record_writer, "GCS_ENABLED", False)
  writer = metrics_lib.MetricWriter("gs://bucket/run", tensorboard=True)
  writer.write(1, {"loss": 0.5})
  writer.close()
  assert "TensorBoard summaries are off for gs://bucket/run" in caplog.text
  assert os.listdir(fake_gcs / "bucket" / "run") == ["metrics.jsonl"]
  assert metrics_lib.read_metrics("gs://bucket/run") == [
      {"step": 1, "loss": 0.5}]


def test_local_workdir_gets_tensorboard_events(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=True)
  writer.write(1, {"loss": 0.5})
  writer.close()
  assert os.listdir(tmp_path / "tensorboard")


class _Terminal:
  """A stream that says it is a terminal and records what is written."""

  def __init__(self):
    self.text = ""

  def isatty(self):
    return True

  def write(self, text):
    self.text += text

  def flush(self):
    pass


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal():
  import io
  stream = io.StringIO()
  progress = metrics_lib.Progress(100, 0, 64, name="jest", stream=stream)
  progress.log(10, 0.5)
  progress.log(20, 0.25)
  progress.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 2 and "\r" not in stream.getvalue()
  assert lines[1].startswith("jest step 20/100 | loss 0.2500 | ")
  assert "examples/s | ETA " in lines[1]


def test_progress_rewrites_one_line_on_a_terminal_and_ends_it_on_close():
  terminal = _Terminal()
  progress = metrics_lib.Progress(100, 0, 64, stream=terminal)
  progress.log(10, 0.5)
  progress.log(20, 0.25)
  assert terminal.text.count("\r") == 2 and "\n" not in terminal.text
  progress.eval(20, {"eval/zeroshot_top1": 0.5})
  last = terminal.text.split("\r")[-1]  # Padded over the longer line.
  assert last.endswith("\n")
  assert last.rstrip() == "step 20 eval zeroshot_top1 0.5000"
  progress.log(30, 0.125)
  progress.close()
  assert terminal.text.endswith("\n")


def test_progress_of_other_processes_writes_nothing():
  terminal = _Terminal()
  progress = metrics_lib.Progress(100, 0, 64, stream=terminal, enabled=False)
  progress.log(10, 0.5)
  progress.close()
  assert terminal.text == ""
