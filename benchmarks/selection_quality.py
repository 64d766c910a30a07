"""How good is JEST's chunked draw? Batch learnability versus brute force.

  python benchmarks/selection_quality.py [--quick]

Writes benchmarks/results/selection_quality.json and selection_quality.png
(learnability versus filtering ratio, and versus sampling iterations, as in
the paper's Figure 2).

The data are synthetic embeddings built to have large off-diagonal terms
(hard negatives), where joint selection matters and where the paper's claim
("16 chunks match brute-force Gibbs sampling") is hardest to meet:

- `B` examples fall into 32 concept clusters; each has a cluster centre and
  an example-specific direction.
- The reference model separates examples within a cluster (its embedding is
  mostly the specific direction); the learner mostly sees the cluster (its
  embedding is dominated by the centre), so within-cluster negatives have a
  high learner loss and a low reference loss: large positive `s_ik`.
- 20% of captions belong to another example (web noise); the learner's
  per-example noise varies, so the diagonal `s_ii` varies too.
- Both models use a trained temperature and bias; three regimes:
  `hard_negatives` (t = 30, b0 = -10), `medium` (t = 20, b0 = -12),
  `weak` (t = 10, b0 = -10: off-diagonal terms small, as early in training).

Brute force: single-swap Gibbs sampling on the materialised `B x B` scores
(exact Gibbs for `p(S) ~ exp(gain * sum_{i,j in S} s_ij)`), annealed: the gain
rises geometrically from 1e-3 to the target over 100 sweeps (one sweep = `b`
swaps), then 20 sweeps at the target gain, from a uniform start. Plain Gibbs
at the target gain is also run from the chunked draw's output, to show that
it stalls there (at these score scales the target distribution is nearly a
point mass, so unannealed local moves cannot leave a local optimum).

Learnability of a batch = `batch_score` at gain 1 (the sum of
`L_learner - L_reference` over all its pairs), per example (divided by `b`).
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

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REGIMES = {
    "hard_negatives": dict(temperature=30.0, bias=-10.0),
    "medium": dict(temperature=20.0, bias=-12.0),
    "weak": dict(temperature=10.0, bias=-10.0),
}
GAIN = 1.0


def _normalise(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_world(seed, *, size, dim=64, clusters=32, corrupt=0.2,
               temperature=30.0, bias=-10.0):
  """(learner, reference) `Embeddings` of one synthetic super-batch."""
  rng = np.random.default_rng(seed)
  centres = _normalise(rng.normal(size=(clusters, dim)))
  cluster = rng.integers(clusters, size=size)
  specific = _normalise(rng.normal(size=(size, dim)))
  caption_of = np.arange(size)
  noisy = rng.random(size) < corrupt
  caption_of[noisy] = rng.integers(size, size=noisy.sum())
  learner_noise = rng.uniform(0.05, 0.6, size=(size, 1)) * 4 / np.sqrt(dim)

  def model(centre_weight, noise):
    concept = _normalise(centre_weight * centres[cluster] + specific)
    image = _normalise(concept + noise * rng.normal(size=concept.shape))
    text = _normalise(concept[caption_of] + noise * rng.normal(
        size=concept.shape))
    return selection.Embeddings(jnp.asarray(image, jnp.float32),
                                jnp.asarray(text, jnp.float32),
                                jnp.float32(temperature), jnp.float32(bias))

  return model(2.0, learner_noise), model(0.3, 0.2 / np.sqrt(dim))


@jax.jit
def gibbs(key, scores, start, gains):
  """Single-swap Gibbs on the materialised scores; batch score per sweep.

  Args:
    key: PRNG key.
    scores: `[B, B]` pair scores at gain 1.
    start: `int[b]` initial sub-batch.
    gains: `[sweeps]` gain of each sweep (one sweep = b swaps, one per slot).
  """
  size, sub = scores.shape[0], start.shape[0]
  both = scores + scores.T
  diagonal = jnp.diagonal(scores)
  selected = jnp.zeros(size, bool).at[start].set(True)
  # acc_i = sum_{k in S, k != i} (s_ik + s_ki).
  acc = both[:, start].sum(axis=1) - jnp.where(selected, jnp.diagonal(both), 0)

  def swap(carry, step_gain):
    members, selected, acc = carry
    step, gain = step_gain
    slot = step % sub
    out = members[slot]
    selected = selected.at[out].set(False)
    acc = (acc - both[:, out]).at[out].add(both[out, out])
    noise = jax.random.gumbel(jax.random.fold_in(key, step), (size,))
    logits = jnp.where(selected, -jnp.inf, gain * (diagonal + acc) + noise)
    into = jnp.argmax(logits)
    selected = selected.at[into].set(True)
    acc = (acc + both[:, into]).at[into].add(-both[into, into])
    return (members.at[slot].set(into), selected, acc), None

  def sweep(carry, sweep_gain):
    index, gain = sweep_gain
    carry, _ = jax.lax.scan(swap, carry, (index * sub + jnp.arange(sub),
                                          jnp.full((sub,), gain)))
    members = carry[0]
    return carry, scores[members][:, members].sum()

  _, trace = jax.lax.scan(sweep, (start, selected, acc),
                          (jnp.arange(gains.shape[0]), gains))
  return trace


def annealed_gains(anneal_sweeps, final_sweeps, gain=GAIN):
  return jnp.concatenate([jnp.geomspace(1e-3 * gain, gain, anneal_sweeps),
                          jnp.full((final_sweeps,), gain)])


def _timed(fn, *args):
  fn(*args).block_until_ready()  # Compile.
  times = []
  for _ in range(3):
    begin = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - begin)
  return float(np.median(times))


def study_regime(name, *, size, sub, seeds, anneal_sweeps, final_sweeps,
                 chunk_counts, refine_counts):
  learner, reference = make_world(0, size=size, **REGIMES[name])
  scores = materialised.score_matrix(learner, reference,
                                     scoring="learnability", gain=1.0)
  per_example = lambda idx: float(scores[idx][:, idx].sum()) / sub
  keys = jax.random.split(jax.random.key(1), seeds)
  mean = lambda values: (float(np.mean(values)), float(np.std(values)))

  spreads = [float(selection.selection_diagnostics(
      k, learner, reference, jnp.arange(sub))["joint_to_diagonal_spread"])
             for k in keys]
  out = {"regime": REGIMES[name], "B": size, "b": sub,
         "joint_to_diagonal_spread": float(np.mean(spreads))}

  out["uniform"] = mean([per_example(selection.uniform_select(k, size, sub))
                         for k in keys])
  out["independent_topk"] = mean([per_example(selection.independent_select(
      k, learner, reference, sub_batch_size=sub, gain=GAIN)) for k in keys])
  out["independent_sample"] = mean([per_example(selection.independent_select(
      k, learner, reference, sub_batch_size=sub, gain=GAIN, mode="sample"))
                                    for k in keys])
  out["joint_by_chunks"] = {}
  for n_chunks in chunk_counts:
    out["joint_by_chunks"][n_chunks] = mean([per_example(selection.joint_select(
        k, learner, reference, sub_batch_size=sub, n_chunks=n_chunks,
        gain=GAIN)) for k in keys])
  out["joint16_by_refine_sweeps"] = {}
  out["joint16_seconds_by_refine_sweeps"] = {}
  for sweeps in (0,) + tuple(refine_counts):
    draw = functools.partial(selection.joint_select, sub_batch_size=sub,
                             n_chunks=16, gain=GAIN, refine_sweeps=sweeps)
    out["joint16_by_refine_sweeps"][sweeps] = mean(
        [per_example(draw(k, learner, reference)) for k in keys])
    out["joint16_seconds_by_refine_sweeps"][sweeps] = _timed(
        jax.jit(draw), keys[0], learner, reference)

  gains = annealed_gains(anneal_sweeps, final_sweeps)
  traces = np.stack([np.asarray(gibbs(
      k, scores, selection.uniform_select(jax.random.fold_in(k, 1), size, sub),
      gains)) / sub for k in keys])
  out["annealed_gibbs_trace"] = traces.mean(axis=0).tolist()
  out["annealed_gibbs"] = mean(traces[:, -1])
  out["annealed_gibbs_best"] = float(traces.max())
  stall = [np.asarray(gibbs(k, scores, selection.joint_select(
      k, learner, reference, sub_batch_size=sub, n_chunks=16, gain=GAIN),
                            jnp.full((final_sweeps,), GAIN)))[-1] / sub
           for k in keys]
  out["gibbs_from_joint16_at_target_gain"] = mean(stall)

  brute = out["annealed_gibbs"][0]
  out["fraction_of_brute_force"] = {
      "uniform": out["uniform"][0] / brute,
      "independent_topk": out["independent_topk"][0] / brute,
      **{f"joint{n}": v[0] / brute
         for n, v in out["joint_by_chunks"].items()},
      **{f"joint16+refine{r}": v[0] / brute
         for r, v in out["joint16_by_refine_sweeps"].items() if r},
      "gibbs_from_joint16_at_target_gain": out[
          "gibbs_from_joint16_at_target_gain"][0] / brute,
  }
  return out


def study_filter_ratio(*, size, ratios, seeds, anneal_sweeps, final_sweeps,
                       refine_sweeps):
  learner, reference = make_world(0, size=size, **REGIMES["hard_negatives"])
  scores = materialised.score_matrix(learner, reference,
                                     scoring="learnability", gain=1.0)
  keys = jax.random.split(jax.random.key(2), seeds)
  rows = []
  for ratio in ratios:
    sub = int(round(size * (1 - ratio) / 16)) * 16
    per_example = lambda idx, sub=sub: float(scores[idx][:, idx].sum()) / sub
    row = {"filter_ratio": ratio, "b": sub}
    row["uniform"] = float(np.mean([per_example(
        selection.uniform_select(k, size, sub)) for k in keys]))
    row["independent_topk"] = per_example(selection.independent_select(
        keys[0], learner, reference, sub_batch_size=sub))
    for name, sweeps in (("joint16", 0),
                         (f"joint16+refine{refine_sweeps}", refine_sweeps)):
      row[name] = float(np.mean([per_example(selection.joint_select(
          k, learner, reference, sub_batch_size=sub, n_chunks=16, gain=GAIN,
          refine_sweeps=sweeps)) for k in keys]))
    gains = annealed_gains(anneal_sweeps, final_sweeps)
    row["annealed_gibbs"] = float(np.mean([np.asarray(gibbs(
        k, scores, selection.uniform_select(k, size, sub), gains))[-1] / sub
                                           for k in keys]))
    rows.append(row)
    print(f"  f={ratio}: " + ", ".join(
        f"{k} {v:.1f}" for k, v in row.items() if k not in ("filter_ratio",)),
          flush=True)
  return rows


def plot(result, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (by_ratio, by_steps) = plt.subplots(
      1, 2, figsize=(15, 5), gridspec_kw=dict(width_ratios=(1, 1.25)))
  rows = result["by_filter_ratio"]
  ratios = [r["filter_ratio"] for r in rows]
  for name in [k for k in rows[0] if k not in ("filter_ratio", "b")]:
    by_ratio.plot(ratios, [r[name] for r in rows], marker="o", label=name)
  by_ratio.set_xlabel("filtering ratio f = 1 - b/B")
  by_ratio.set_ylabel("batch learnability per example (nats)")
  by_ratio.set_title(f"hard_negatives regime, B={result['filter_B']}")
  by_ratio.legend(fontsize=8)

  for name, regime in result["regimes"].items():
    brute = regime["annealed_gibbs"][0]
    sub = regime["b"]
    chunks = sorted(int(n) for n in regime["joint_by_chunks"])
    line, = by_steps.plot(
        chunks, [regime["joint_by_chunks"][n][0] / brute for n in chunks],
        marker="o", label=f"{name}: joint, n_chunks")
    sweeps = sorted(int(r) for r in regime["joint16_by_refine_sweeps"])
    by_steps.plot([16 * (1 + r) for r in sweeps],
                  [regime["joint16_by_refine_sweeps"][r][0] / brute
                   for r in sweeps], marker="s", linestyle="--",
                  color=line.get_color(),
                  label=f"{name}: joint16 + refine sweeps")
    trace = np.asarray(regime["annealed_gibbs_trace"]) / brute
    by_steps.plot(sub * np.arange(1, len(trace) + 1), trace, linestyle=":",
                  color=line.get_color(), label=f"{name}: annealed Gibbs")
  by_steps.axhline(0.95, color="grey", linewidth=0.8)
  by_steps.set_xscale("log")
  by_steps.set_ylim(0, 1.1)
  by_steps.set_xlabel("sequential draws (chunks; 16 + 16 per refine sweep; "
                      "Gibbs: b swaps per sweep)")
  by_steps.set_ylabel("batch learnability / brute force")
  by_steps.set_title(f"B={regime['B']}, b={regime['b']} (f=0.8), gain 1")
  by_steps.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="fewer seeds, sweeps and settings (~1 minute)")
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  quick = args.quick
  size, sub = 2560, 512
  settings = dict(
      seeds=2 if quick else 3,
      anneal_sweeps=40 if quick else 100, final_sweeps=10 if quick else 20,
      chunk_counts=(1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64, 128,
                                                 256, 512),
      refine_counts=(1, 2, 4) if quick else (1, 2, 4, 8))
  result = {
      "command": "python benchmarks/selection_quality.py" + (
          " --quick" if quick else ""),
      "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                  "jax": jax.__version__, "python": platform.python_version()},
      "gain": GAIN, "settings": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in settings.items()},
      "regimes": {},
  }
  begin = time.time()
  for name in REGIMES:
    print(f"regime {name} (B={size}, b={sub})", flush=True)
    regime = study_regime(name, size=size, sub=sub, **settings)
    result["regimes"][name] = regime
    print("  joint-to-diagonal spread at b: "
          f"{regime['joint_to_diagonal_spread']:.2f}; fraction of brute force: "
          + ", ".join(f"{k} {v:.3f}"
                      for k, v in regime["fraction_of_brute_force"].items()),
          flush=True)
    print("  seconds (matrix-free, jitted) by refine sweeps: " + ", ".join(
        f"{k}: {v:.3f}" for k, v in
        regime["joint16_seconds_by_refine_sweeps"].items()), flush=True)
  print("by filtering ratio (hard_negatives), learnability per example:")
  result["filter_B"] = size
  result["by_filter_ratio"] = study_filter_ratio(
      size=size, ratios=(0.5, 0.8, 0.9) if quick else (0.5, 0.7, 0.8, 0.9,
                                                       0.95),
      seeds=settings["seeds"], anneal_sweeps=settings["anneal_sweeps"],
      final_sweeps=settings["final_sweeps"], refine_sweeps=4)
  result["seconds"] = time.time() - begin
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "selection_quality.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(args.out, "selection_quality.png"))
  print(f"wrote {args.out}/selection_quality.json and .png "
        f"({result['seconds']:.0f} s)")


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


if __name__ == "__main__":
  main()
