"""notebooks/jest_demo.ipynb, executed headless on tiny settings.

Its code cells run in order in one namespace, as a kernel would run them,
with tiny settings injected after the cell tagged `parameters` (as papermill
does: that cell still runs, so the runtime detection and sizing runs too) and
IPython's `!` / `%` lines (the Colab-only install) replaced by `pass`. The
test session has 8 simulated CPU devices (conftest.py), so the notebook runs
the multi-device path an accelerator runtime runs: a mesh over every device.
"""

import json
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "jest_demo.ipynb")


def tiny_parameters(workdir):
  return f"""
WORKDIR = {workdir!r}
STEPS = 2
REFERENCE_STEPS = 2
FILTER_RATIO = 0.5
EVAL_EVERY = 2
OVERRIDES = ("batch_size=16", "selection.n_chunks=4", "data.n_train=256",
             "data.n_curated=128", "data.n_retrieval=32",
             "data.n_zeroshot=48", "eval.batch_size=32", "log_every=1",
             "optim.warmup_steps=1")
"""


def as_python(cell):
  """A code cell's source with IPython-only lines made `pass`."""
  lines = []
  for line in "".join(cell["source"]).splitlines():
    stripped = line.lstrip()
    if stripped.startswith(("!", "%")):
      line = line[:len(line) - len(stripped)] + "pass"
    lines.append(line)
  return "\n".join(lines)


def test_notebook_runs_end_to_end_and_selects_b_of_the_super_batch(tmp_path):
  with open(NOTEBOOK) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert "REPO_URL" in "".join(cells[0]["source"])  # The Colab install.
  namespace = {"__name__": "__main__"}
  shown = []
  show = plt.show
  plt.show = lambda *a, **k: shown.append(plt.gcf().number)
  try:
    for cell in cells:
      tags = cell.get("metadata", {}).get("tags", [])
      sources = [as_python(cell)]
      if "parameters" in tags:
        sources.append(tiny_parameters(str(tmp_path)))
      for source in sources:
        code = compile(source, f"<{cell['id']}>", "exec")
        exec(code, namespace)  # pylint: disable=exec-used
  finally:
    plt.show = show
    plt.close("all")
  settings = namespace["SETTINGS"]  # Sized by the notebook for its devices.
  assert (settings.platform, settings.devices) == ("cpu", 8)
  assert namespace["mesh"].devices.size == 8  # Every local device.
  assert namespace["summary"]["jest"]["step"] == 2
  assert len(shown) == 3  # Curves, selected pairs, rejected pairs.
  indices = namespace["indices"]
  assert len(np.unique(indices)) == len(indices) == 16  # b of B = 32.
  assert namespace["selected"].sum() == 16
