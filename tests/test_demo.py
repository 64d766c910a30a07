"""The demo driver end to end on tiny settings: every stage, every output."""

import json
import os

from jest_jax import demo

TINY = ("batch_size=16", "selection.n_chunks=4", "data.n_train=256",
        "data.n_curated=128", "data.n_retrieval=32", "data.n_zeroshot=48",
        "eval.batch_size=32", "log_every=1", "optim.warmup_steps=1")


def test_demo_writes_runs_summary_plot_and_table_and_a_rerun_resumes(
    tmp_path):
  # One demo run checked for every output, then rerun on the same workdir
  # (two runs cost the suite twice the time of one).
  workdir = str(tmp_path)
  kwargs = dict(steps=4, reference_steps=4, filter_ratio=0.5, seed=0,
                eval_every=2, overrides=TINY)
  summary = demo.run_demo(workdir, **kwargs)
  for run in ("reference", "iid", "clip_score", "jest"):
    assert os.path.exists(os.path.join(workdir, run, "metrics.jsonl"))
    assert summary[run]["step"] == 4
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  for key in ("eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1",
              "train/corrupt_fraction", "wall_seconds", "step"):
    for run in ("iid", "clip_score", "jest"):
      assert key in written[run]
  for run in ("clip_score", "jest"):
    assert "select/pool_corrupt_fraction" in written[run]
  # CLIP-score filtering scores from the cache: no learner pass over B.
  assert "flops/score" not in written["clip_score"]
  assert written["clip_score"]["flops/ratio_to_iid"] < 1.1
  assert written["reference_cache"]["count"] == 256
  for run in ("reference", "iid", "clip_score", "jest"):  # Web-like data.
    with open(os.path.join(workdir, run, "config.json")) as f:
      assert json.load(f)["data"]["corpus_version"] == 2
  assert os.path.getsize(os.path.join(workdir, "curves.png")) > 10_000
  table = demo.format_table(summary)
  assert table.count("\n") == 5 and "| jest | 4 |" in table
  assert "| clip_score | 4 |" in table

  # A rerun resumes every stage instead of retraining it: nothing is
  # appended to the runs' metrics.
  rows_before = {run: open(os.path.join(workdir, run, "metrics.jsonl")).read()
                 for run in ("reference", "iid", "clip_score", "jest")}
  again = demo.run_demo(workdir, **kwargs)
  for run, rows in rows_before.items():
    assert open(os.path.join(workdir, run, "metrics.jsonl")).read() == rows
  assert again["jest"]["step"] == 4
