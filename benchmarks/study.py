"""Does JEST pay? The paper's claims measured on the web-like corpus.

  python benchmarks/study.py                  # the whole study (resumable)
  python benchmarks/study.py --plan           # the runs, without running
  python benchmarks/study.py --tabulate_only  # tables from finished runs
  python benchmarks/study.py --sweep          # the knob sweep (one seed)

Every run trains configs/jest.py's learner on the built-in corpus version 2
(long-tailed concepts, near-duplicates, 50% noise; jest_jax/data/corpus_v2.py)
with the same model, optimiser and schedule for `--steps` steps; learner
seeds vary (`--seeds`), the reference is one: configs/reference.py on the
curated split (balanced, a quarter of the concepts missing) for
`--reference_steps`, the learner's size, its embeddings of the pool cached
once. Runs live in `--workdir`, one directory each; a killed study resumes
where it stopped (finished runs are read, an unfinished one continues from
its last checkpoint). Runs go seed by seed, so every method has a seed
before any has three.

The runs (names as in the tables; f = the filtering ratio):

  iid               uniform batches of b = 64.
  iid_matched       IID for as many steps as JEST's (f = 0.8) FLOPs buy, and
  iid_wall          as its training seconds buy (one run when the two agree
                    within 10%); seed 0's JEST and IID runs set the steps.
  iid_b192          IID at a 3x batch (JEST's FLOPs spent on batch size).
  jest_fF           joint learnability, f = 0.5, 0.8, 0.9.
  independent_fF    independent top-k learnability (RHO-LOSS-like top-k).
  sampled_f0.8      independent learnability, sampled without replacement.
  clip_score_fF     CLIP-score filtering: independent top-k on the
                    reference's own pair score (from the cache; no learner
                    pass, about an IID step).
  easy_reference_f0.8  joint, reference score only.
  hard_learner_f0.8    joint, learner loss only (no reference).
  jest_refine_f0.8     JEST with 2 refinement sweeps (docs/design.md §4).
  flexi_jest_f0.8      scored at patch 16 (4 tokens), half of each sub-batch
                       trained at patch 16, half at 8.
  flexi_nocotrain_f0.8 the same scoring, every trained row at patch 8 (no
                       low-resolution co-training).

FLOPs per step are XLA's cost analysis of each run's unoptimised step (the
like-for-like count `flops/ratio_to_iid` uses); the reference's training
and its cache build are reported separately and, where a row says so,
charged in full to every run that reads the cache (the worst case for JEST:
one reference serving many runs would amortise it). Wall seconds are the
training loop's (evaluations and checkpoints left out), on this machine,
one run at a time.

The knob sweep (`--sweep`, after the study: its default point and tie
margin are the study's seed-0 runs and seed spread) moves one corpus knob
at a time (noise share, tail steepness, the reference's training steps)
and trains IID, CLIP-score, easy-reference and JEST (f = 0.8) at each
point, each point with its own reference; it writes study_sweep.json and
study_sweep.png.

Writes benchmarks/results/study.json, study_curves.png (zero-shot vs steps,
FLOPs and seconds) and study_ratios.png (final accuracy vs f), and prints
the per-run table and the claims table.
"""

import json
import math
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from jest_jax import cache_reference  # pylint: disable=g-bad-import-order
from jest_jax import config_lib
from jest_jax import metrics as metrics_lib
from jest_jax import train

_WORKDIR = flags.DEFINE_string("workdir", "runs/study", "Where runs live.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Learner steps.")
_REFERENCE_STEPS = flags.DEFINE_integer("reference_steps", 1000,
                                        "Reference steps (a modest budget).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Learner seeds.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between evals.")
_ONLY = flags.DEFINE_list("only", [], "Run only these run names (all seeds).")
_PLAN = flags.DEFINE_bool("plan", False, "Print the runs and stop.")
_SWEEP = flags.DEFINE_bool("sweep", False,
                            "Run the knob sweep (one seed) instead.")
_TABULATE_ONLY = flags.DEFINE_bool("tabulate_only", False,
                                   "Tabulate finished runs; train nothing.")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(
    os.path.abspath(__file__)), "results"), "Output directory.")

# The corpus every run reads (version 2 at its documented defaults).
DATA = {"data.corpus_version": 2}
RATIOS = (0.5, 0.8, 0.9)
MAIN_F = 0.8
REFINE_SWEEPS = 2
LARGE_BATCH = 192
# Final metrics tabulated, and the headline one.
METRICS = (("eval/zeroshot_top1", "zero-shot"),
           ("eval/zeroshot/tail_top1", "zero-shot, tail"),
           ("eval/zeroshot/missing_top1", "zero-shot, curated-missing"),
           ("eval/i2t_r1", "i2t R@1"), ("eval/t2i_r1", "t2i R@1"),
           ("eval/retrieval/hard_negative_acc", "hard-negative acc"),
           ("train/corrupt_fraction", "corrupt share trained"))
HEADLINE = "eval/zeroshot_top1"
RETRIEVAL = "eval/i2t_r1"


def run_specs(matched_steps=None):
  """`[(name, configs/jest.py method, filter ratio, {override: value})]` in
  priority order (one seed). `matched_steps`: `{"iid_matched": n,
  "iid_wall": n}` once seed 0's IID and JEST have run, else None."""
  specs = [
      ("iid", "iid", 0.0, {}),
      (f"jest_f{MAIN_F}", "jest", MAIN_F, {}),
      (f"clip_score_f{MAIN_F}", "clip_score", MAIN_F, {}),
      (f"flexi_jest_f{MAIN_F}", "flexi_jest", MAIN_F, {}),
  ]
  for name, steps in (matched_steps or {}).items():
    specs.append((name, "iid", 0.0, {"total_steps": steps}))
  specs += [
      (f"iid_b{LARGE_BATCH}", "iid", 0.0, {"batch_size": LARGE_BATCH}),
      (f"independent_f{MAIN_F}", "independent", MAIN_F, {}),
      (f"sampled_f{MAIN_F}", "independent", MAIN_F,
       {"selection.kind": "independent_sample"}),
      (f"easy_reference_f{MAIN_F}", "easy_reference", MAIN_F, {}),
      (f"hard_learner_f{MAIN_F}", "hard_learner", MAIN_F, {}),
      (f"jest_refine_f{MAIN_F}", "jest", MAIN_F,
       {"selection.refine_sweeps": REFINE_SWEEPS}),
      (f"flexi_nocotrain_f{MAIN_F}", "flexi_jest", MAIN_F,
       {"patch.large_fraction": 0.0}),
  ]
  for f in RATIOS:
    if f == MAIN_F:
      continue
    for method in ("jest", "independent", "clip_score"):
      specs.append((f"{method}_f{f}", method, f, {}))
  return specs


def learner_config(method, f, seed, steps, overrides, cache_dir, ref_dir,
                   label, data=None):
  config = config_lib.load_config(
      "jest", f"method={method},filter_ratio={f},steps={steps},seed={seed}")
  config_lib.apply_overrides(config, {**(data or DATA), **overrides})
  config.method = label
  config.eval_every = config.checkpoint_every = _EVAL_EVERY.value
  if config_lib.needs_reference(config):
    config.reference.cache_dir = cache_dir
    config.reference.workdir = ref_dir
  return config


def train_reference(ref_dir, data=None, steps=None):
  config = config_lib.load_config(
      "reference", f"steps={steps or _REFERENCE_STEPS.value},seed=0")
  config_lib.apply_overrides(config, data or DATA)
  config.eval_every = config.checkpoint_every = _EVAL_EVERY.value
  train.train_and_evaluate(config, ref_dir)
  return cache_reference.build_cache(ref_dir, "train")


# ------------------------------------------------------------- reading --


def read_run(run_dir):
  """A finished run's curves and costs, or None if it has not finished."""
  rows = metrics_lib.read_metrics(run_dir) if os.path.isdir(run_dir) else []
  config_path = os.path.join(run_dir, "config.json")
  flops_path = os.path.join(run_dir, "flops.json")
  if not rows or not os.path.exists(config_path) or not os.path.exists(
      flops_path):
    return None
  with open(config_path) as f:
    config = json.load(f)
  with open(flops_path) as f:
    flops = json.load(f)
  if rows[-1]["step"] < config["total_steps"]:
    return None
  # Like for like with flops/ratio_to_iid: the unoptimised step's count.
  step_flops = flops["flops/ratio_to_iid"] * flops["flops/iid_step"]
  logs = [r for r in rows if "train/step_seconds" in r]
  evals = [r for r in rows if HEADLINE in r]
  seconds_per_step = logs[-1]["train/step_seconds"]

  def mean_of(key):
    values = [r[key] for r in logs if key in r]
    return float(np.mean(values)) if values else None
  return dict(
      steps=config["total_steps"], batch_size=config["batch_size"],
      step_flops=step_flops, seconds_per_step=seconds_per_step,
      train_seconds=seconds_per_step * config["total_steps"],
      reference_cache_flops=flops.get("flops/reference_cache"),
      uses_reference=bool(config["reference"]["cache_dir"]),
      curve={key: [[r["step"], r[key]] for r in evals if key in r]
             for key, _ in METRICS if key.startswith("eval/")},
      final={key: (evals[-1].get(key) if key.startswith("eval/")
                   else mean_of(key)) for key, _ in METRICS},
      select_score=mean_of("select/score"),
      select_score_uniform=mean_of("select/score_uniform"))


def reach_step(curve, target):
  """The first (linearly interpolated) step at which `curve` (`[[step,
  value]]`, from step 0 at value 0) reaches `target`; None if never."""
  previous = (0, 0.0)
  for step, value in curve:
    if value >= target:
      s0, v0 = previous
      if value == v0:
        return float(step)
      return s0 + (step - s0) * (target - v0) / (value - v0)
    previous = (step, value)
  return None


def value_at(curve, step):
  """`curve` linearly interpolated at `step` (None past its end)."""
  previous = (0, 0.0)
  for s, value in curve:
    if s >= step:
      s0, v0 = previous
      return v0 + (value - v0) * (step - s0) / max(s - s0, 1e-9)
    previous = (s, value)
  return None


def stats(values):
  values = [v for v in values if v is not None]
  if not values:
    return None
  array = np.asarray(values, float)
  return dict(mean=float(array.mean()),
              std=float(array.std(ddof=1)) if len(array) > 1 else 0.0,
              min=float(array.min()), max=float(array.max()), n=len(values))


def text(stat, digits=3):
  if stat is None:
    return "–"
  if stat["n"] == 1:
    return f"{stat['mean']:.{digits}f} (1 seed)"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


# ------------------------------------------------------------ analysis --


def compare(a, b):
  """'a > b', 'a < b' or 'tie' for two stats: a difference counts when it
  exceeds the larger of the two seed spreads (std over seeds)."""
  if a is None or b is None:
    return "missing"
  margin = max(a["std"], b["std"])
  diff = a["mean"] - b["mean"]
  if diff > margin:
    return ">"
  if diff < -margin:
    return "<"
  return "tie"


def analyse(runs, reference, seeds):
  """The per-run table and the claims, from `{name: {seed: run}}`."""
  def final(name, key):
    return stats([r["final"][key] for r in runs.get(name, {}).values()])

  def per_seed(name, fn):
    return stats([fn(r) for r in runs.get(name, {}).values()])

  names = list(runs)
  table = {name: {key: final(name, key) for key, _ in METRICS}
           for name in names}
  for name in names:
    table[name]["seeds"] = len(runs[name])
    table[name]["select/score"] = per_seed(name, lambda r: r["select_score"])
    table[name]["step_flops"] = per_seed(name, lambda r: r["step_flops"])
    table[name]["train_seconds"] = per_seed(name,
                                            lambda r: r["train_seconds"])

  iid_final = final("iid", HEADLINE)
  ref_cost = reference.get("total_flops", 0.0)
  claims = []

  def claim(number, text_, paper, ours, verdict, details=None):
    claims.append(dict(claim=number, text=text_, paper=paper, ours=ours,
                       verdict=verdict, details=details or {}))

  # 1. joint beats independent selection at f >= 0.5.
  rows, verdicts = {}, []
  for f in RATIOS:
    for key in (HEADLINE, RETRIEVAL):
      joint, indep = final(f"jest_f{f}", key), final(f"independent_f{f}", key)
      rows[f"f={f} {key}"] = dict(joint=joint, independent=indep,
                                  compare=compare(joint, indep))
      verdicts.append(compare(joint, indep))
  claim(1, "joint selection beats independent selection at f >= 0.5",
        "joint > independent at every f (paper Fig. 2)",
        "; ".join(f"{k}: {text(v['joint'])} vs {text(v['independent'])}"
                  for k, v in rows.items()),
        _verdict(verdicts), rows)

  # 2. learnability > easy reference > hard learner.
  order = {k: final(f"{k}_f{MAIN_F}", HEADLINE)
           for k in ("jest", "easy_reference", "hard_learner")}
  cmp1 = compare(order["jest"], order["easy_reference"])
  cmp2 = compare(order["easy_reference"], order["hard_learner"])
  claim(2, "learnability > easy-reference > hard-learner (f = 0.8)",
        "learnability best, easy-reference second, hard-learner worst",
        ", ".join(f"{k} {text(v)}" for k, v in order.items()),
        _verdict([cmp1, cmp2]), dict(order=order, compare=[cmp1, cmp2]))

  # 3. the learnability of selected batches rises with f.
  scores = {f: per_seed(f"jest_f{f}", lambda r: r["select_score"])
            for f in RATIOS}
  rising = [compare(scores[b], scores[a])
            for a, b in zip(RATIOS, RATIOS[1:])]
  claim(3, "the learnability of selected batches rises with f",
        "rises with f", ", ".join(f"f={f}: {text(s, 2)}"
                                  for f, s in scores.items()),
        _verdict(rising), dict(select_score=scores))

  # 4. JEST at f = 0.8 reaches IID's final accuracy in fewer steps.
  claim_4 = None
  if iid_final is not None:
    steps = per_seed(f"jest_f{MAIN_F}", lambda r: reach_step(
        r["curve"][HEADLINE], iid_final["mean"]))
    iid_steps = _first(runs.get("iid"), "steps")
    factor = (iid_steps / steps["mean"]) if steps and iid_steps else None
    claim_4 = factor
    claim(4, "JEST (f = 0.8) needs fewer steps to reach IID's final "
          "zero-shot", "up to 13x fewer (at scale); target here >= 5x",
          (f"IID's final {text(iid_final)} in {iid_steps} steps; JEST "
           f"reaches it at step {text(steps, 0)} (in {steps['n'] if steps else 0}"
           f" of {len(runs.get(f'jest_f{MAIN_F}', {}))} seeds): "
           + (f"{factor:.1f}x fewer" if factor else "not reached")),
          ("holds (target met)" if factor and factor >= 5 else
           "holds, target (5x) missed" if factor and factor > 1 else
           "does not hold"), dict(steps=steps, iid_steps=iid_steps,
                                  factor=factor))

  # 5. the learner surpasses the reference.
  details, verdicts = {}, []
  for key in (HEADLINE, "eval/zeroshot/tail_top1",
              "eval/zeroshot/missing_top1", RETRIEVAL,
              "eval/retrieval/hard_negative_acc"):
    ref = reference["final"].get(key)
    ours = final(f"jest_f{MAIN_F}", key)
    details[key] = dict(reference=ref, jest=ours)
    if ref is not None and ours is not None:
      verdicts.append(">" if ours["mean"] - ours["std"] > ref else
                      "<" if ours["mean"] + ours["std"] < ref else "tie")
  claim(5, "the learner (JEST, f = 0.8) surpasses its reference",
        "yes (the learner ends above the reference)",
        "; ".join(f"{k.split('/')[-1]}: {text(v['jest'])} vs reference "
                  f"{v['reference']:.3f}" for k, v in details.items()
                  if v["reference"] is not None),
        _verdict(verdicts), details)

  # 6. Flexi-JEST: IID's final with a fraction of IID's FLOPs; needs
  # low-resolution co-training.
  if iid_final is not None and "iid" in runs:
    iid_flops = stats([r["step_flops"] * r["steps"]
                       for r in runs["iid"].values()])
    iid_seconds = stats([r["train_seconds"] for r in runs["iid"].values()])
    out = {}
    for name in (f"flexi_jest_f{MAIN_F}", f"flexi_nocotrain_f{MAIN_F}",
                 f"jest_f{MAIN_F}", f"clip_score_f{MAIN_F}"):
      reach = lambda r: reach_step(r["curve"][HEADLINE], iid_final["mean"])
      out[name] = dict(
          flops_share=per_seed(name, lambda r: (
              reach(r) * r["step_flops"] / iid_flops["mean"]
              if reach(r) is not None else None)),
          flops_share_with_reference=per_seed(name, lambda r: (
              (reach(r) * r["step_flops"]
               + (ref_cost if r["uses_reference"] else 0.0))
              / iid_flops["mean"] if reach(r) is not None else None)),
          wall_share=per_seed(name, lambda r: (
              reach(r) * r["seconds_per_step"] / iid_seconds["mean"]
              if reach(r) is not None else None)),
          final=final(name, HEADLINE))
    flexi = out[f"flexi_jest_f{MAIN_F}"]
    nocotrain = out[f"flexi_nocotrain_f{MAIN_F}"]
    share = flexi["flops_share"]
    verdict = ("holds" if share and share["mean"] < 1 else "does not hold")
    cotrain = compare(flexi["final"], nocotrain["final"])
    verdict += ("; co-training needed: yes" if cotrain == ">" else
                f"; co-training needed: not shown ({cotrain})")
    claim(6, "Flexi-JEST reaches IID's final zero-shot with a fraction of "
          "IID's FLOPs, and needs low-resolution co-training",
          "yes, ~10x less compute than SigLIP; co-training needed",
          (f"FLOPs share {text(share, 2)} (incl. reference "
           f"{text(flexi['flops_share_with_reference'], 2)}), wall share "
           f"{text(flexi['wall_share'], 2)}; final {text(flexi['final'])} "
           f"vs without co-training {text(nocotrain['final'])}"),
          verdict, out)

  # 7. batches closer to brute-force learnability train better.
  plain, refined = f"jest_f{MAIN_F}", f"jest_refine_f{MAIN_F}"
  score_cmp = compare(table.get(refined, {}).get("select/score"),
                      table.get(plain, {}).get("select/score"))
  acc_cmp = compare(final(refined, HEADLINE), final(plain, HEADLINE))
  ret_cmp = compare(final(refined, RETRIEVAL), final(plain, RETRIEVAL))
  claim(7, f"batches closer to brute-force learnability ({REFINE_SWEEPS} "
        "refinement sweeps) train better",
        "better approximations of the joint optimum train better",
        (f"batch learnability {text(table.get(refined, {}).get('select/score'), 2)}"
         f" vs {text(table.get(plain, {}).get('select/score'), 2)}; zero-shot "
         f"{text(final(refined, HEADLINE))} vs {text(final(plain, HEADLINE))}"
         f"; i2t R@1 {text(final(refined, RETRIEVAL))} vs "
         f"{text(final(plain, RETRIEVAL))}"),
        ("higher-learnability batches" + (" train better" if acc_cmp == ">"
                                          else f" do not train better "
                                          f"({acc_cmp})")
         if score_cmp == ">" else f"refinement did not raise learnability "
         f"({score_cmp})"), dict(score=score_cmp, zeroshot=acc_cmp,
                                 retrieval=ret_cmp))

  # Targets of the issue on the version-2 default.
  targets = {}
  if claim_4 is not None or iid_final is not None:
    targets["jest_steps_factor_ge_5"] = claim_4
  clip = f"clip_score_f{MAIN_F}"
  if clip in runs:
    target = {}
    for key in (HEADLINE, RETRIEVAL):
      clip_final = final(clip, key)
      for name in (f"jest_f{MAIN_F}", f"flexi_jest_f{MAIN_F}"):
        # Each learner's accuracy when it has spent CLIP-score's FLOPs.
        at_equal = per_seed(name, lambda r, key=key: value_at(
            r["curve"][key], _clip_flops(runs[clip]) / r["step_flops"]))
        target[f"{name} {key}"] = dict(at_clip_flops=at_equal,
                                       clip_score=clip_final,
                                       compare=compare(at_equal, clip_final))
    targets["beats_clip_score_at_equal_flops"] = target
  if "iid" in runs and iid_final is not None:
    iid_seconds = stats([r["train_seconds"] for r in runs["iid"].values()])
    targets["flexi_wall_share_le_half"] = per_seed(
        f"flexi_jest_f{MAIN_F}", lambda r: (
            reach_step(r["curve"][HEADLINE], iid_final["mean"])
            * r["seconds_per_step"] / iid_seconds["mean"]
            if reach_step(r["curve"][HEADLINE], iid_final["mean"])
            is not None else None))
  return table, claims, targets


def _clip_flops(clip_runs):
  return float(np.mean([r["steps"] * r["step_flops"]
                        for r in clip_runs.values()]))


def _first(seed_runs, key):
  if not seed_runs:
    return None
  return next(iter(seed_runs.values()))[key]


def _verdict(comparisons):
  if not comparisons or "missing" in comparisons:
    return "incomplete"
  if all(c == ">" for c in comparisons):
    return "holds"
  if all(c == "<" for c in comparisons):
    return "does not hold (reversed)"
  if all(c in (">", "tie") for c in comparisons):
    return "holds only in part (others within the seed spread)"
  if all(c == "tie" for c in comparisons):
    return "not shown (within the seed spread)"
  return "mixed: " + ", ".join(comparisons)


# ------------------------------------------------------------- output --


def format_tables(table, claims, reference):
  header = ("| run | seeds | " + " | ".join(label for _, label in METRICS)
            + " | FLOPs/step | train s |")
  lines = [header, "|" + "---|" * (len(METRICS) + 4)]
  ref_cells = [f"{reference['final'].get(k):.3f}"
               if reference["final"].get(k) is not None else "–"
               for k, _ in METRICS]
  seconds = reference.get("train_seconds")
  lines.append("| reference | 1 | " + " | ".join(ref_cells) + " | – | "
               + (f"{seconds:.0f}" if seconds else "–") + " |")
  for name, row in table.items():
    cells = [text(row[key]) for key, _ in METRICS]
    flops = row["step_flops"]["mean"] if row["step_flops"] else float("nan")
    seconds = row["train_seconds"]
    lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells)
                 + f" | {flops:.2e} | "
                 + (f"{seconds['mean']:.0f}" if seconds else "–") + " |")
  claim_lines = ["| # | claim | paper | ours (mean ± std over seeds) | "
                 "verdict |", "|---|---|---|---|---|"]
  for c in claims:
    claim_lines.append(f"| {c['claim']} | {c['text']} | {c['paper']} | "
                       f"{c['ours']} | {c['verdict']} |")
  return lines, claim_lines


def plot(runs, reference, path_curves, path_ratios):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  shown = [n for n in ("iid", "iid_matched", "iid_wall", f"iid_b{LARGE_BATCH}",
                       f"clip_score_f{MAIN_F}", f"jest_f{MAIN_F}",
                       f"flexi_jest_f{MAIN_F}", f"independent_f{MAIN_F}",
                       f"jest_refine_f{MAIN_F}") if n in runs]
  axes_spec = (("step", lambda r, s: s),
               ("learner FLOPs", lambda r, s: s * r["step_flops"]),
               ("training seconds", lambda r, s: s * r["seconds_per_step"]))
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
  for ax, (label, to_x) in zip(axes, axes_spec):
    for name in shown:
      seed_runs = list(runs[name].values())
      steps = [s for s, _ in seed_runs[0]["curve"][HEADLINE]]
      values = np.array([[v for _, v in r["curve"][HEADLINE]][:len(steps)]
                         for r in seed_runs if len(r["curve"][HEADLINE])
                         >= len(steps)])
      x = [to_x(seed_runs[0], s) for s in steps]
      line, = ax.plot(x, values.mean(0), marker=".", label=name)
      ax.fill_between(x, values.min(0), values.max(0), alpha=0.15,
                      color=line.get_color())
    ref = reference["final"].get(HEADLINE)
    if ref is not None:
      ax.axhline(ref, color="k", ls=":", lw=1, label="reference (final)")
    ax.set_xlabel(label)
    ax.set_ylabel("zero-shot top-1 (96 concepts)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("corpus v2: mean over seeds, band = min–max")
  fig.tight_layout()
  fig.savefig(path_curves, dpi=100)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key in zip(axes, (HEADLINE, RETRIEVAL)):
    for method in ("jest", "independent", "clip_score"):
      xs, means, stds = [], [], []
      for f in RATIOS:
        name = f"{method}_f{f}"
        if name in runs:
          values = [r["final"][key] for r in runs[name].values()]
          xs.append(f)
          means.append(np.mean(values))
          stds.append(np.std(values))
      if xs:
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                    label=method)
    if "iid" in runs:
      ax.axhline(np.mean([r["final"][key] for r in runs["iid"].values()]),
                 color="grey", ls="--", label="iid")
    ax.set_xlabel("filtering ratio f")
    ax.set_title(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path_ratios, dpi=100)
  plt.close(fig)


# -------------------------------------------------------------- sweep --

# The knob sweep (`--sweep`): where each method wins when the data differ
# from the default. One seed (the first of `--seeds`); every point trains
# its own reference (on its own corpus, for its own steps) and these runs.
SWEEP_RUNS = ("iid", f"clip_score_f{MAIN_F}", f"easy_reference_f{MAIN_F}",
              f"jest_f{MAIN_F}")
# (knob, value): "reference_steps" sets the reference's training steps,
# any other knob the corpus field `data.<knob>`. Each knob's centre is the
# study's default point.
SWEEP = (("noise_rate", 0.2), ("noise_rate", 0.8), ("zipf_exponent", 0.0),
         ("zipf_exponent", 1.5), ("reference_steps", 250),
         ("reference_steps", 4000))
SWEEP_METRICS = (HEADLINE, "eval/zeroshot/tail_top1", RETRIEVAL,
                 "eval/retrieval/hard_negative_acc")


def sweep_points():
  """`[(knob, value, data overrides, reference steps, directory suffix)]`:
  the default point (the study's own runs, suffix None) and SWEEP's."""
  data = config_lib.load_config("jest").data
  default = dict(noise_rate=data.noise_rate, zipf_exponent=data.zipf_exponent,
                 reference_steps=_REFERENCE_STEPS.value)
  points = [("default", default, {}, None, None)]
  for knob, value in SWEEP:
    if knob == "reference_steps":
      overrides, ref_steps = {}, value
    else:
      overrides, ref_steps = {f"data.{knob}": value}, None
    points.append((knob, value, overrides, ref_steps, f"{knob}_{value}"))
  return points


def run_sweep(workdir, seed, train_now):
  """Trains (or reads) every sweep point; returns `[point]` with each
  point's reference summary and `{run name: run or None}`."""
  specs = {spec[0]: spec for spec in run_specs()}
  out = []
  for knob, value, overrides, ref_steps, suffix in sweep_points():
    point_dir = (workdir if suffix is None
                 else os.path.join(workdir, "sweep", suffix))
    ref_dir = os.path.join(point_dir, "reference")
    data = {**DATA, **overrides}
    cache_dir, manifest = None, None
    if train_now:
      print(f"== sweep point {knob}={value}", flush=True)
      cache_dir, manifest = train_reference(ref_dir, data, ref_steps)
    elif os.path.isdir(os.path.join(ref_dir, "embeddings", "train")):
      from jest_jax import reference_cache  # pylint: disable=g-import-not-at-top
      cache_dir = os.path.join(ref_dir, "embeddings", "train")
      manifest = reference_cache.read_manifest(cache_dir)
    runs = {}
    for name in SWEEP_RUNS:
      _, method, f, run_overrides = specs[name]
      config = learner_config(method, f, seed, _STEPS.value,
                              dict(run_overrides), cache_dir, ref_dir, name,
                              data)
      # A run that reads no reference on the default corpus is the default
      # point's run (the reference-steps knob changes nothing for IID).
      same = not overrides and not config_lib.needs_reference(config)
      run_dir = os.path.join(workdir if same else point_dir,
                             f"{name}_seed{seed}")
      if train_now and read_run(run_dir) is None:
        print(f"== {run_dir}", flush=True)
        train.train_and_evaluate(config, run_dir)
      runs[name] = read_run(run_dir)
    reference = (reference_summary(ref_dir, manifest, ref_steps)
                 if manifest is not None else None)
    out.append(dict(knob=knob, value=value, data=data,
                    reference_steps=ref_steps or _REFERENCE_STEPS.value,
                    reference=reference, runs=runs))
  return out


def sweep_margin(workdir, seeds):
  """`{metric: the study's largest seed spread}` (std of the final value
  over seeds, among SWEEP_RUNS at the default point) for zero-shot and
  i2t R@1: one-seed differences below it are read as ties. 0 where the
  study has fewer than two seeds."""
  runs = {name: [r for r in (read_run(os.path.join(workdir, f"{name}_seed{s}"))
                             for s in seeds) if r is not None]
          for name in SWEEP_RUNS}
  margins = {}
  for key in (HEADLINE, RETRIEVAL):
    spreads = [float(np.std([r["final"][key] for r in seed_runs], ddof=1))
               for seed_runs in runs.values() if len(seed_runs) > 1]
    margins[key] = max(spreads) if spreads else 0.0
  return margins


def sweep_rows(points, margin):
  """Per point: final metrics per method, JEST at CLIP-score's FLOPs, and
  the winners (every method within `margin[metric]` of the best)."""
  rows = []
  clip, jest = f"clip_score_f{MAIN_F}", f"jest_f{MAIN_F}"
  for point in points:
    runs = point["runs"]
    finals = {name: ({k: run["final"][k] for k in SWEEP_METRICS}
                     if run else None) for name, run in runs.items()}
    winners = {}
    for key in (HEADLINE, RETRIEVAL):
      scored = {n: f[key] for n, f in finals.items() if f is not None}
      if scored:
        best = max(scored.values())
        winners[key] = [n for n, v in scored.items()
                        if v >= best - margin[key]]
    jest_at_clip = None
    if runs.get(clip) and runs.get(jest):
      budget = runs[clip]["steps"] * runs[clip]["step_flops"]
      jest_at_clip = value_at(runs[jest]["curve"][HEADLINE],
                              budget / runs[jest]["step_flops"])
    rows.append(dict(knob=point["knob"], value=point["value"],
                     reference=(point["reference"] or {}).get("final"),
                     final=finals, jest_zeroshot_at_clip_flops=jest_at_clip,
                     winners=winners))
  return rows


def format_sweep(rows, margin):
  short = {"iid": "IID", f"clip_score_f{MAIN_F}": "CLIP-score",
           f"easy_reference_f{MAIN_F}": "easy-ref", f"jest_f{MAIN_F}": "JEST"}
  cell = lambda x: "–" if x is None else f"{x:.3f}"
  lines = ["| knob = value | reference | " + " | ".join(
      short[n] for n in SWEEP_RUNS) + " | JEST at CLIP-score's FLOPs "
           "(zero-shot) | "
           f"best zero-shot (±{margin[HEADLINE]:.3f}) | best i2t R@1 "
           f"(±{margin[RETRIEVAL]:.3f}) |",
           "|" + "---|" * (len(SWEEP_RUNS) + 5)]
  for row in rows:
    value = (", ".join(f"{k} {v}" for k, v in row["value"].items())
             if row["knob"] == "default" else f"{row['knob']} = {row['value']}")
    ref = (row["reference"] or {}).get(HEADLINE)
    cells = []
    for name in SWEEP_RUNS:
      final = row["final"].get(name)
      cells.append("–" if final is None else
                   f"{final[HEADLINE]:.3f} / {final[RETRIEVAL]:.3f}")
    best = [", ".join(short[n] for n in row["winners"].get(k, []))
            for k in (HEADLINE, RETRIEVAL)]
    lines.append(f"| {value} | {cell(ref)} | " + " | ".join(cells)
                 + f" | {cell(row['jest_zeroshot_at_clip_flops'])} | "
                 + " | ".join(best) + " |")
  return lines


def plot_sweep(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  default = next(r for r in rows if r["knob"] == "default")
  knobs = [k for k in dict.fromkeys(r["knob"] for r in rows)
           if k != "default"]
  fig, axes = plt.subplots(1, len(knobs), figsize=(5 * len(knobs), 4))
  for ax, knob in zip(np.atleast_1d(axes), knobs):
    points = sorted([(r["value"], r) for r in rows if r["knob"] == knob]
                    + [(default["value"][knob], default)],
                    key=lambda p: p[0])
    xs = [x for x, _ in points]
    for name in SWEEP_RUNS:
      ys = [(r["final"].get(name) or {}).get(HEADLINE, np.nan)
            for _, r in points]
      ax.plot(xs, ys, marker="o", label=name)
    ax.plot(xs, [(r["reference"] or {}).get(HEADLINE, np.nan)
                 for _, r in points], "k:", marker="x", label="reference")
    ax.set_xlabel(knob)
    ax.set_ylabel("final zero-shot top-1")
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.suptitle("knob sweep (corpus v2, 1 seed; the middle point of each "
               "knob is the default)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def sweep_main(workdir, seeds, train_now):
  if _PLAN.value:
    for knob, value, overrides, ref_steps, suffix in sweep_points():
      print(f"{knob}={value}: {overrides} reference "
            f"{ref_steps or _REFERENCE_STEPS.value} steps, runs "
            f"{', '.join(SWEEP_RUNS)} in "
            + os.path.join(workdir, *(("sweep", suffix) if suffix else ())))
    return
  points = run_sweep(workdir, seeds[0], train_now)
  margin = sweep_margin(workdir, seeds)
  rows = sweep_rows(points, margin)
  lines = format_sweep(rows, margin)
  command = "python " + " ".join(sys.argv)
  os.makedirs(_OUT.value, exist_ok=True)
  plot_sweep(rows, os.path.join(_OUT.value, "study_sweep.png"))
  common.write_json(_OUT.value, "study_sweep", dict(
      command=command, machine=common.machine(), steps=_STEPS.value,
      seed=seeds[0], tie_margin=margin, points=points, rows=rows,
      markdown=lines))
  print(f"command: {command}\n")
  print("\n".join(lines))


# --------------------------------------------------------------- main --


def reference_summary(ref_dir, manifest, steps=None):
  rows = metrics_lib.read_metrics(ref_dir)
  evals = [r for r in rows if HEADLINE in r]
  logs = [r for r in rows if "train/step_seconds" in r]
  with open(os.path.join(ref_dir, "flops.json")) as f:
    flops = json.load(f)
  steps = steps or _REFERENCE_STEPS.value
  train_flops = (flops["flops/ratio_to_iid"] * flops["flops/iid_step"]
                 * steps)
  build = (manifest or {}).get("build_flops", 0.0) or 0.0
  return dict(steps=steps,
              final={k: evals[-1].get(k) for k, _ in METRICS
                     if k.startswith("eval/")} if evals else {},
              train_flops=train_flops, cache_build_flops=build,
              total_flops=train_flops + build,
              train_seconds=(logs[-1]["train/step_seconds"]
                             * steps) if logs else None,
              cache_build_seconds=(manifest or {}).get("build_seconds"))


def main(argv):
  del argv
  metrics_lib.quiet_library_logs()
  workdir = _WORKDIR.value
  seeds = [int(s) for s in _SEEDS.value]
  ref_dir = os.path.join(workdir, "reference")
  train_now = not (_PLAN.value or _TABULATE_ONLY.value)
  if _SWEEP.value:
    sweep_main(workdir, seeds, train_now)
    return
  manifest, cache_dir = None, None
  if train_now:
    cache_dir, manifest = train_reference(ref_dir)
  elif os.path.isdir(os.path.join(ref_dir, "embeddings", "train")):
    cache_dir = os.path.join(ref_dir, "embeddings", "train")
    from jest_jax import reference_cache  # pylint: disable=g-import-not-at-top
    manifest = reference_cache.read_manifest(cache_dir)

  runs = {}

  def matched():
    iid, jest = (read_run(os.path.join(workdir, f"{n}_seed{seeds[0]}"))
                 for n in ("iid", f"jest_f{MAIN_F}"))
    if iid is None or jest is None:
      return None
    by_flops = int(round(_STEPS.value * jest["step_flops"]
                         / iid["step_flops"]))
    by_wall = int(round(_STEPS.value * jest["seconds_per_step"]
                        / iid["seconds_per_step"]))
    if abs(by_wall - by_flops) <= 0.1 * by_flops:
      return {"iid_matched": by_flops}
    return {"iid_matched": by_flops, "iid_wall": by_wall}

  plan = []
  for seed in seeds:
    done = set()
    while True:  # The spec list grows once the matched steps are known.
      pending = [spec for spec in run_specs(matched()) if spec[0] not in done
                 and (not _ONLY.value or spec[0] in _ONLY.value)]
      if not pending:
        break
      name, method, f, overrides = pending[0]
      done.add(name)
      run_dir = os.path.join(workdir, f"{name}_seed{seed}")
      plan.append(run_dir)
      if _PLAN.value:
        print(f"{run_dir}: {method} f={f} {overrides}"
              + (" (done)" if read_run(run_dir) else ""))
        continue
      if train_now and read_run(run_dir) is None:
        print(f"== {run_dir}", flush=True)
        config = learner_config(method, f, seed,
                                overrides.pop("total_steps", _STEPS.value),
                                overrides, cache_dir, ref_dir, name)
        train.train_and_evaluate(config, run_dir)
      result = read_run(run_dir)
      if result is not None:
        runs.setdefault(name, {})[seed] = result
  if _PLAN.value:
    print(f"{len(plan)} runs (matched IID runs appear once seed "
          f"{seeds[0]}'s iid and jest_f{MAIN_F} have finished)")
    return
  if not os.path.isdir(ref_dir):
    sys.exit("error: no study yet; run without --tabulate_only")

  reference = reference_summary(ref_dir, manifest)
  table, claims, targets = analyse(runs, reference, seeds)
  lines, claim_lines = format_tables(table, claims, reference)
  command = "python " + " ".join(sys.argv)
  os.makedirs(_OUT.value, exist_ok=True)
  plot(runs, reference, os.path.join(_OUT.value, "study_curves.png"),
       os.path.join(_OUT.value, "study_ratios.png"))
  common.write_json(_OUT.value, "study", dict(
      command=command, machine=common.machine(), steps=_STEPS.value,
      reference_steps=_REFERENCE_STEPS.value, seeds=seeds, data=DATA,
      reference=reference, runs=runs, table=table, claims=claims,
      targets=targets, markdown=dict(runs=lines, claims=claim_lines)))
  print(f"command: {command}\n")
  print("\n".join(lines))
  print()
  print("\n".join(claim_lines))
  print()
  print(json.dumps(_jsonable(targets), indent=1))


def _jsonable(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x


if __name__ == "__main__":
  app.run(main)
