"""Is the refined joint draw as good as brute force in every regime?

  python benchmarks/selection_regimes.py [--regimes 50] [--quick]

Draws random regimes of synthetic clustered embeddings (the world of
benchmarks/selection_quality.py) with B, b, d, the cluster count, the share
of unrelated captions, the temperature and the sampling gain drawn at random,
plus the hard-negative regime (B = 1024, b = 208, 128 clusters of ~8, half the
captions unrelated, temperature 30, gain 1). In each it measures the batch
learnability (`batch_score` at gain 1, per example) of the chunked pass
(16 chunks) and of the pass + `refine_sweeps` 1 / 2 / 4, their wall time, and
that of brute force:

  brute force = annealed single-swap Gibbs on the materialised `B x B`
  scores, targeting the same distribution `p(S) ~ exp(gain * score(S))`:
  the gain rises geometrically from 1e-3 x gain to the target over
  `anneal` sweeps (one sweep = b swaps), then `final` sweeps at the target;
  `restarts` runs from uniform sub-batches. Its learnability is the mean
  over restarts of the final batch (a long-run sample of the target), and
  `brute_best` the best final batch.

Ratios are method / brute force (means over keys). Where brute force's
learnability is at most that of a uniform batch (low gains: the target is
nearly uniform), the ratio is not meaningful and the regime is reported but
left out of the distribution. Writes benchmarks/results/selection_regimes.json.
"""

import argparse
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jest_jax import selection
from jest_jax.selection import materialised
from selection_quality import _cpu_model, _timed, annealed_gains, gibbs, make_world

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
HARD = dict(size=1024, sub=208, dim=64, clusters=128, corrupt=0.5,
            temperature=30.0, bias=-10.0, gain=1.0)
SWEEPS = (0, 1, 2, 4)


def random_regime(rng):
  size = int(rng.choice([256, 512, 1024]))
  sub = max(16, int(round(size * (1 - rng.choice([0.5, 0.8, 0.9])) / 16)) * 16)
  return dict(size=size, sub=sub, dim=int(rng.choice([16, 64])),
              clusters=int(rng.integers(4, size // 4)),
              corrupt=float(rng.uniform(0.0, 0.5)),
              temperature=float(rng.uniform(5.0, 30.0)),
              bias=float(rng.uniform(-14.0, -6.0)),
              gain=float(np.exp(rng.uniform(np.log(0.3), np.log(100.0)))))


def study(regime, *, seed, keys, anneal, final, restarts):
  size, sub, gain = regime["size"], regime["sub"], regime["gain"]
  learner, reference = make_world(
      seed, size=size, dim=regime["dim"], clusters=regime["clusters"],
      corrupt=regime["corrupt"], temperature=regime["temperature"],
      bias=regime["bias"])
  scores = materialised.score_matrix(learner, reference,
                                     scoring="learnability", gain=1.0)
  per_example = lambda idx: float(scores[idx][:, idx].sum()) / sub
  keys = jax.random.split(jax.random.key(seed), keys)
  row = dict(regime)
  row["uniform"] = float(np.mean([per_example(
      selection.uniform_select(k, size, sub)) for k in keys]))
  for sweeps in SWEEPS:
    draw = jax.jit(functools.partial(
        selection.joint_select, sub_batch_size=sub, n_chunks=16, gain=gain,
        refine_sweeps=sweeps))
    row[f"refine{sweeps}"] = float(np.mean([per_example(
        draw(k, learner, reference)) for k in keys]))
    row[f"refine{sweeps}_s"] = _timed(draw, keys[0], learner, reference)
  gains = annealed_gains(anneal, final, gain)
  begin = time.perf_counter()
  finals = [float(np.asarray(gibbs(
      jax.random.fold_in(keys[0], r), scores,
      selection.uniform_select(jax.random.fold_in(keys[0], 100 + r), size,
                               sub), gains))[-1]) / sub
            for r in range(restarts)]
  row["brute_s"] = (time.perf_counter() - begin) / restarts
  row["brute"], row["brute_best"] = float(np.mean(finals)), float(max(finals))
  row["meaningful"] = row["brute"] > row["uniform"]
  for sweeps in SWEEPS:
    row[f"refine{sweeps}_over_brute"] = row[f"refine{sweeps}"] / row["brute"]
    row[f"refine{sweeps}_time_over_pass"] = (row[f"refine{sweeps}_s"] /
                                             row["refine0_s"])
  return row


def summarise(rows):
  kept = [r for r in rows if r["meaningful"]]
  out = {"regimes": len(rows), "meaningful": len(kept)}
  for sweeps in SWEEPS:
    ratios = np.array([r[f"refine{sweeps}_over_brute"] for r in kept])
    times = np.array([r[f"refine{sweeps}_time_over_pass"] for r in rows])
    out[f"refine{sweeps}"] = {
        "min": float(ratios.min()), "p10": float(np.quantile(ratios, 0.1)),
        "median": float(np.median(ratios)), "max": float(ratios.max()),
        "share_at_least_0.95": float(np.mean(ratios >= 0.95)),
        "time_over_pass_median": float(np.median(times)),
        "never_worse_than_pass": bool(all(
            r[f"refine{sweeps}"] >= r["refine0"] - 1e-4 * abs(r["refine0"])
            for r in rows)),
    }
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--regimes", type=int, default=50,
                      help="random regimes, besides the hard-negative one")
  parser.add_argument("--quick", action="store_true",
                      help="8 regimes, shorter brute force")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  n = 8 if args.quick else args.regimes
  settings = dict(keys=2, anneal=30 if args.quick else 60,
                  final=5 if args.quick else 10, restarts=2)
  rng = np.random.default_rng(0)
  regimes = [dict(HARD, name="hard_negatives")] + [
      dict(random_regime(rng), name=f"random{i}") for i in range(n)]
  rows, begin = [], time.time()
  print("regime          B    b   d  clu corr  temp  gain | uniform  brute |"
        " pass/brute  +1 +2 +4 sweeps | time x pass +1 +2 +4")
  for i, regime in enumerate(regimes):
    row = study(regime, seed=i, **settings)
    rows.append(row)
    print(f"{row['name']:14s} {row['size']:4d} {row['sub']:4d} {row['dim']:3d}"
          f" {row['clusters']:4d} {row['corrupt']:.2f} {row['temperature']:5.1f}"
          f" {row['gain']:5.1f} | {row['uniform']:7.2f} {row['brute']:6.2f} | "
          + " ".join(f"{row[f'refine{s}_over_brute']:5.2f}" for s in SWEEPS)
          + (" " if row["meaningful"] else " (n/a)") + " | "
          + " ".join(f"{row[f'refine{s}_time_over_pass']:4.1f}"
                     for s in SWEEPS[1:]), flush=True)
    write(args, n, settings, rows, begin)  # A killed run keeps the regimes done.
  summary = write(args, n, settings, rows, begin)
  print(json.dumps(summary, indent=1))
  print(f"wrote {args.out}/selection_regimes.json ({time.time() - begin:.0f} s)")


def write(args, n, settings, rows, begin):
  summary = summarise(rows)
  result = {
      "command": "python benchmarks/selection_regimes.py" + (
          " --quick" if args.quick else f" --regimes {n}"),
      "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                  "jax": jax.__version__, "python": platform.python_version(),
                  "load_average": os.getloadavg()},
      "settings": settings, "n_chunks": 16, "summary": summary, "rows": rows,
      "seconds": time.time() - begin}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "selection_regimes.json"), "w") as f:
    json.dump(result, f, indent=1)
  return summary


if __name__ == "__main__":
  main()
