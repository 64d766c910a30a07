"""IID vs JEST vs Flexi-JEST side by side: step time, FLOPs, accuracy per FLOP.

  python benchmarks/flexi_jest.py [--steps 1500] [--reference_dir runs/demo/reference]

All three learners use configs/flexi_jest.py (FlexiViT at patch 4, large
patch 8, f = 0.8) with the same optimiser, steps and seed, and the same
reference cache (trained at patch 8 with configs/reference.py unless
--reference_dir names a finished reference run). Each run is resumable.
Writes benchmarks/results/flexi_jest.json and flexi_jest.png and prints a
table; step times are medians over logged intervals, evals excluded.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

from common import machine
from jest_jax import cache_reference
from jest_jax import config_lib
from jest_jax import metrics as metrics_lib
from jest_jax import train

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_flexi", "Run directory.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Learner steps.")
_REFERENCE_STEPS = flags.DEFINE_integer("reference_steps", 4000,
                                        "Reference steps if one is trained.")
_REFERENCE_DIR = flags.DEFINE_string("reference_dir", None,
                                     "A finished reference run to reuse.")
_FRACTIONS = flags.DEFINE_list("large_fractions", ["0.5"],
                               "Flexi-JEST large-patch co-training fractions.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 250, "Steps between evals.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__),
                                               "results"), "Output directory.")


def run_summary(workdir):
  rows = metrics_lib.read_metrics(workdir)
  with open(os.path.join(workdir, "flops.json")) as f:
    flops = json.load(f)
  evals = [r for r in rows if "eval/zeroshot_top1" in r]
  step_seconds = [r["train/step_seconds"] for r in rows
                  if "train/step_seconds" in r and r["step"] > rows[0]["step"]]
  return dict(
      flops=flops, step_seconds=float(np.median(step_seconds)),
      curve=[dict(step=r["step"], flops=r["step"] * flops["flops/step"],
                  zeroshot_top1=r["eval/zeroshot_top1"],
                  i2t_r1=r["eval/i2t_r1"], t2i_r1=r["eval/t2i_r1"])
             for r in evals],
      final=evals[-1])


def first_reaching(curve, target):
  for point in curve:
    if point["zeroshot_top1"] >= target:
      return point
  return None


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, result in results.items():
    curve = result["curve"]
    axes[0].plot([p["flops"] for p in curve],
                 [p["zeroshot_top1"] for p in curve], marker=".", label=name)
    axes[1].plot([p["step"] for p in curve],
                 [p["zeroshot_top1"] for p in curve], marker=".", label=name)
  target = results["iid"]["final"]["eval/zeroshot_top1"]
  for ax, label in zip(axes, ("cumulative training FLOPs (XLA cost analysis)",
                              "step")):
    ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xlabel(label)
    ax.set_ylabel("zero-shot top-1 (patch 4)")
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_xscale("log")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  workdir = _WORKDIR.value
  ref_dir = _REFERENCE_DIR.value
  if not ref_dir:
    ref_dir = os.path.join(workdir, "reference")
    config = config_lib.load_config("reference", f"steps={_REFERENCE_STEPS.value}")
    config.eval_every = config.checkpoint_every = 1000
    train.train_and_evaluate(config, ref_dir)
  cache_dir, _ = cache_reference.build_cache(ref_dir, "train")

  runs = {"iid": "method=iid", "jest": "method=jest"}
  for fraction in _FRACTIONS.value:
    runs[f"flexi_jest@{fraction}"] = (f"method=flexi_jest,"
                                      f"large_fraction={fraction}")
  results = {}
  for name, arg in runs.items():
    config = config_lib.load_config("flexi_jest", f"{arg},steps={_STEPS.value}")
    config.eval_every = config.checkpoint_every = _EVAL_EVERY.value
    config.reference.cache_dir = cache_dir
    run_dir = os.path.join(workdir, name)
    train.train_and_evaluate(config, run_dir)
    results[name] = run_summary(run_dir)

  iid = results["iid"]
  target = iid["final"]["eval/zeroshot_top1"]
  table = ["| run | step ms | time / IID | FLOPs/step | FLOPs / IID | paper "
           "formula | A | final zero-shot | FLOPs to IID's final (/ IID's) |",
           "|" + "---|" * 9]
  for name, r in results.items():
    reach = first_reaching(r["curve"], target)
    iid_total = iid["curve"][-1]["flops"]
    r["flops_to_iid_final"] = reach and reach["flops"]
    r["flops_to_iid_final_ratio"] = reach and reach["flops"] / iid_total
    r["time_ratio_to_iid"] = r["step_seconds"] / iid["step_seconds"]
    f = r["flops"]
    reach_text = (f"{reach['flops']:.2e} ({reach['flops'] / iid_total:.2f})"
                  if reach else "not reached")
    table.append(
        f"| {name} | {1e3 * r['step_seconds']:.1f} | "
        f"{r['time_ratio_to_iid']:.2f} | {f['flops/step']:.2e} | "
        f"{f['flops/ratio_to_iid']:.2f} | {f['flops/paper_ratio']:.2f} | "
        f"{f['flops/approx_factor']:.2f} | "
        f"{r['final']['eval/zeroshot_top1']:.3f} | {reach_text} |")
  command = "python " + " ".join(sys.argv)
  os.makedirs(_OUT.value, exist_ok=True)
  out = dict(command=command, machine=machine(), steps=_STEPS.value,
             reference_dir=ref_dir, results=results, table=table,
             git=subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip())
  with open(os.path.join(_OUT.value, "flexi_jest.json"), "w") as f:
    json.dump(out, f, indent=2)
  plot(results, os.path.join(_OUT.value, "flexi_jest.png"))
  print(f"command: {command}\nmachine: {out['machine']}\n")
  print("\n".join(table))


if __name__ == "__main__":
  app.run(main)
