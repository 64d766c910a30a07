"""The built-in demo: JEST versus IID and CLIP-score filtering on web-like data.

  python -m jest_jax.demo --workdir runs/demo      (what `make demo` runs)

On the built-in corpus, version 2 by default (long-tailed concepts,
near-duplicates, half the pairs corrupted; `--corpus_version 1` for the
first round's). Stages, each resumable (re-running skips what is finished):
  1. reference: a two-tower trained on the clean curated split;
  2. its embeddings of the noisy training split, cached once;
  3. iid:  the learner trained on uniform batches of b;
  4. clip_score: the same learner, optimiser and number of steps, trained on
     the b pairs of each super-batch of b / (1 - f) that the reference scores
     highest (CLIP-score filtering: the cheap baseline, about an IID step);
  5. jest: the same again, trained on the jointly most learnable b of each
     super-batch of b / (1 - f).
Writes WORKDIR/{reference,iid,clip_score,jest}/metrics.jsonl, summary.json,
curves.png and prints a comparison table.

On your own data (converted with `convert_folder` / `convert_shards`):

  python -m jest_jax.demo --workdir runs/mine --pool my_pool \
      --curated my_curated [--data_dir DIR] [--set evals.NAME.KEY=VALUE]

`--pool NAME[:SPLIT]` is what the learners train on and the reference
embeds (split default train), `--curated NAME[:SPLIT]` what the reference
trains on (default: the pool dataset's `curated` split). Both learners use
the reference's tokenizer; the evaluators read the pool's `validation`
split when it has one (`convert_folder --holdout`).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jest_jax import cache_reference
from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax import metrics as metrics_lib
from jest_jax import reference_cache
from jest_jax import run_guard
from jest_jax import train
from jest_jax.data import tokenizer as tokenizer_lib



# The learners, in the order they run and are tabulated.
LEARNERS = ("iid", "clip_score", "jest")
# The built-in corpus generator the demo reads unless told otherwise.
DEFAULT_CORPUS_VERSION = 2
STAGES = 2 + len(LEARNERS)


def _stage(text):
  """A stage header: on the terminal and in the log."""
  logging.info("%s", text)
  print(text, flush=True)


def _dataset(value, default_split):
  """`NAME[:SPLIT]` -> `(name, split)`."""
  name, _, split = value.partition(":")
  return name, split or default_split


def run_demo(workdir, *, steps, reference_steps, filter_ratio, seed,
             eval_every, overrides=(), pool="", curated="", data_dir="",
             corpus_version=DEFAULT_CORPUS_VERSION):
  """Runs the stages; returns the summary dict written to summary.json.

  `pool`, `curated`: `NAME[:SPLIT]` of prepared datasets (see the module
  docstring); empty: the built-in corpus, generator `corpus_version` (2,
  web-like; 1, the first round's, reproduces the README's version-1 table).
  """
  pool_name, pool_split = _dataset(pool, "train")
  curated_name, curated_split = _dataset(curated or pool, "curated")
  if curated and not pool:
    raise config_lib.ConfigError("--curated needs --pool (the training data)")

  def configure(config, name="", split=""):
    config.data.corpus_version = corpus_version
    config.eval_every = eval_every
    config.checkpoint_every = eval_every
    if name:
      config.data.update(dict(name="tfds", tfds_name=name, split=split,
                              data_dir=data_dir or config.data.data_dir))
    return config_lib.apply_overrides(config, overrides)

  summary = {}
  ref_dir = os.path.join(workdir, "reference")
  config = configure(config_lib.load_config(
      "reference", f"steps={reference_steps},seed={seed}"),
      curated_name, curated_split)
  if pool_name:  # Evaluated where the learners are: the pool's held-out split.
    for entry in config.evals.values():
      if entry.preset == "auto" and not entry.data.tfds_name:
        entry.data.update(dict(name="tfds", tfds_name=pool_name,
                               data_dir=data_dir or config.data.data_dir))
  _stage(f"== stage 1/{STAGES}: reference model -> {ref_dir}")
  summary["reference"], _ = train.train_and_evaluate(config, ref_dir)

  _stage(f"== stage 2/{STAGES}: reference embeddings of the training split")
  cache_dir, manifest = cache_reference.build_cache(
      ref_dir, pool_split, data_overrides=dict(tfds_name=pool_name)
      if pool_name else None)
  summary["reference_cache"] = dict(
      dir=cache_dir, count=manifest["count"],
      build_seconds=manifest.get("build_seconds"))

  runs = {
      "iid": f"method=iid,steps={steps},seed={seed}",
      "clip_score": f"method=clip_score,filter_ratio={filter_ratio},"
                    f"steps={steps},seed={seed}",
      "jest": f"method=jest,filter_ratio={filter_ratio},steps={steps},"
              f"seed={seed}",
  }
  for i, (name, arg) in enumerate(runs.items()):
    config = configure(config_lib.load_config("jest", arg), pool_name,
                       pool_split)
    if pool_name and not config.data.tokenizer:  # The reference's ids.
      config.data.tokenizer = os.path.join(ref_dir, tokenizer_lib.WORKDIR_FILE)
    if name != "iid":
      config.reference.cache_dir = cache_dir
      config.reference.workdir = ref_dir
    run_dir = os.path.join(workdir, name)
    _stage(f"== stage {i + 3}/{STAGES}: {name} learner -> {run_dir}")
    summary[name], _ = train.train_and_evaluate(config, run_dir)

  # Whether the training data marks its corrupted pairs (else the
  # corrupted-share column is a meaningless 0).
  summary["corrupt_known"] = not pool_name or bool(config.data.corrupt_key)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  plot_curves(workdir, LEARNERS, os.path.join(workdir, "curves.png"))
  return summary


def plot_curves(workdir, runs, path):
  """Zero-shot top-1, retrieval R@1 and selected corrupted share vs step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("eval/zeroshot_top1", "zero-shot top-1"),
            ("eval/i2t_r1", "image→text R@1"),
            ("train/corrupt_fraction", "corrupted share of trained batch")]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
  for ax, (key, title) in zip(axes, panels):
    for run in runs:
      rows = [r for r in metrics_lib.read_metrics(os.path.join(workdir, run))
              if key in r]
      ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".",
              label=run)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_table(summary, corrupt_known=None):
  """The comparison table; `corrupt_known` (default: the summary's): the
  training data marks its corrupted pairs (the built-in corpus, or
  `data.corrupt_key`), else the corrupted-share column says n/a."""
  if corrupt_known is None:
    corrupt_known = summary.get("corrupt_known", True)
  header = ("| run | steps | zero-shot top-1 | i2t R@1 | t2i R@1 | "
            "corrupt share trained (pool) | wall s |")
  lines = [header, "|" + "---|" * 7]
  for name in ("reference",) + LEARNERS:
    if name not in summary:
      continue
    s = summary[name]
    corrupt = s.get("train/corrupt_fraction", float("nan"))
    pool = s.get("select/pool_corrupt_fraction")
    corrupt_text = f"{corrupt:.3f}" + (f" ({pool:.3f})" if pool is not None
                                       else "")
    if not corrupt_known:
      corrupt_text = "n/a (no corrupt_key)"
    if name == "reference":
      corrupt_text = "0 (curated split)"
    lines.append(
        f"| {name} | {s['step']} | {s['eval/zeroshot_top1']:.3f} | "
        f"{s['eval/i2t_r1']:.3f} | {s['eval/t2i_r1']:.3f} | {corrupt_text} | "
        f"{s['wall_seconds']:.0f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  workdir = _WORKDIR.value
  metrics_lib.cli_logging()
  try:
    os.makedirs(workdir, exist_ok=True)
    with metrics_lib.file_log(os.path.join(workdir, "demo.log")):
      summary = run_demo(
          workdir, steps=_STEPS.value, reference_steps=_REFERENCE_STEPS.value,
          filter_ratio=_FILTER_RATIO.value, seed=_SEED.value,
          eval_every=_EVAL_EVERY.value, overrides=_OVERRIDES.value,
          pool=_POOL.value, curated=_CURATED.value, data_dir=_DATA_DIR.value,
          corpus_version=_CORPUS_VERSION.value)
  except (config_lib.ConfigError, train.TrainingError,
          reference_cache.CacheError, input_pipeline.DataError) as e:
    sys.exit(f"error: {e}")
  except run_guard.Preempted as e:  # One line; rerun the demo to resume.
    sys.stderr.write(f"{e}\n")
    sys.exit(e.exit_code)
  print()
  print(format_table(summary))
  print()
  print(f"outputs: {os.path.abspath(workdir)}/ (summary.json, curves.png, "
        "reference/ iid/ clip_score/ jest/ with metrics.jsonl and "
        "checkpoints)")


def _define_flags():
  """CLI flags, defined only when this module is the program (other
  programs import its functions)."""
  global _WORKDIR, _STEPS, _REFERENCE_STEPS, _FILTER_RATIO, _SEED
  global _EVAL_EVERY, _OVERRIDES, _POOL, _CURATED, _DATA_DIR, _CORPUS_VERSION
  _WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
  _STEPS = flags.DEFINE_integer("steps", 3000, "Learner steps (IID and JEST).")
  _REFERENCE_STEPS = flags.DEFINE_integer("reference_steps", 2000,
                                          "Reference model steps.")
  _CORPUS_VERSION = flags.DEFINE_integer(
      "corpus_version", DEFAULT_CORPUS_VERSION,
      "Built-in corpus generator: 2 (web-like) or 1 (the first round's; "
      "with --reference_steps 4000 it reproduces the README's version-1 "
      "table).")
  _FILTER_RATIO = flags.DEFINE_float("filter_ratio", 0.8, "JEST's f.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the learners and reference.")
  _EVAL_EVERY = flags.DEFINE_integer("eval_every", 250, "Steps between evals.")
  _OVERRIDES = flags.DEFINE_multi_string(
      "set", [], "Config overrides for every run, key=value (e.g. "
      "data.n_train=20000); may repeat.")
  _POOL = flags.DEFINE_string(
      "pool", "", "Your training data, a prepared dataset NAME[:SPLIT] "
      "(default split train); empty: the built-in corpus.")
  _CURATED = flags.DEFINE_string(
      "curated", "", "The reference's data, NAME[:SPLIT] (default: the "
      "pool's 'curated' split).")
  _DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir of --pool "
                                  "and --curated.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
