"""Joint example selection (JEST) on one device, matrix-free.

Everything here is a pure function of embeddings, two model scalars per model
and a PRNG key; nothing imports a model, a data pipeline or a trainer.

Notation (docs/design.md §1): a super-batch of `B` examples, a selected sub-batch of
`b`, `n_chunks` chunks of `c = b / n_chunks`. Per-pair sigmoid losses

  L_ij = -log_sigmoid(z_ij * (temperature * <x_i, y_j> + bias)),
  z_ij = +1 if i == j else -1,

and pair scores `s_ij` built from them:

  learnability    s = gain * (L_learner - L_reference)
  easy_reference  s = -gain * L_reference
  hard_learner    s = gain * L_learner

Joint sampling draws chunk 1 by Gumbel-top-c on `s_ii`, then each next chunk
by Gumbel-top-c on the conditional logits `s_ii + sum_{k in S} (s_ik + s_ki)`
of the not-yet-selected examples (`S`: selected so far).

Matrix-free: the conditional logits only need, for every candidate `i`, a
running sum over the selected set. Each chunk adds the contributions of its
`c` new examples, computed from embeddings as `B x c` blocks, so the whole
pass costs `O(B * b * d)` work and `O(B * c)` memory; the `B x B` score
matrix of the paper is never built (`jest_jax.selection.materialised` keeps
that form as the tests' oracle and the benchmarks' baseline).

Noise convention (so that every implementation consumes identical noise):
chunk `j` of the pass draws `jax.random.gumbel(jax.random.fold_in(key, j),
(B,))`; refinement step `t` (see `joint_select`) draws with
`fold_in(key, n_chunks + t)` (its annealing schedule is in `joint_select`'s
docstring). Within a chunk, indices come in descending order of perturbed
logit (`jax.lax.top_k`'s order).

Non-finite embeddings: the public functions run `check_finite` themselves
when their inputs are concrete arrays (eager calls) and raise a ValueError
naming the model and field. Under `jax.jit` values are not known at trace
time, so a jitted caller should put `all_finite(learner, reference)` in its
step outputs and stop on the host when it is False (a non-finite embedding
would otherwise be selected first: `top_k` ranks NaN highest).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCORINGS = ("learnability", "easy_reference", "hard_learner")
LOSSES = ("sigmoid", "softmax")
METHODS = ("joint", "independent_topk", "independent_sample", "uniform")
INDEPENDENT_MODES = ("topk", "sample")

# gain is the inverse temperature of the sampling distribution. The kernel's
# default, 1, is the unit-free scale: a sub-batch is drawn with odds
# exp(sum of L_learner - L_reference), for sigmoid's per-pair log-likelihoods
# the likelihood ratio p_reference(labels) / p_learner(labels). Larger gains
# approach a greedy top-c per chunk (the paper's listing uses 100). A trainer
# picks its own (jest_jax's config sets `selection.gain`); the README's
# methods table gives what each gain measured on the built-in corpus.
DEFAULT_GAIN = 1.0
DEFAULT_N_CHUNKS = 16
# Rows per block where a sub-batch is scored against a whole set.
DEFAULT_BLOCK_SIZE = 1024
# Full f32 matmuls: on TPU the default f32 precision is one bf16 pass, whose
# ~1e-2 relative error times a temperature of ~100 would move logits by ~1.
_PRECISION = jax.lax.Precision.HIGHEST


class Embeddings(NamedTuple):
  """One model's view of a super-batch (a pytree).

  Attributes:
    image: `[B, d]` L2-normalised image embeddings.
    text: `[B, d]` L2-normalised text embeddings (row i pairs with image i).
    temperature: scalar, the logit multiplier `exp(t)` (not the log).
    bias: scalar, the sigmoid bias `b0` (ignored by the softmax loss, where
      it cancels).
  """
  image: jax.Array
  text: jax.Array
  temperature: jax.Array
  bias: jax.Array


class ModelRows(NamedTuple):
  """One scoring model's rows, laid out for the chunk updates.

  `pairs[0]` is `temperature * image` and `pairs[1]` is `text`, so that
  `pairs[s] @ pairs[1 - s][J].T` gives both directions of a `B x c` block in
  one batched matmul: slot 0 holds `l_ik` (candidate's image, chunk's text),
  slot 1 holds `l_ki` (chunk's image, candidate's text). Scaling the image
  side first matches `losses.pair_logits`.
  """
  pairs: jax.Array     # [2, n, d], float32.
  diagonal: jax.Array  # [n], temperature * <x_i, y_i>.
  bias: jax.Array      # scalar.
  weight: jax.Array    # scalar: +gain or -gain.


# ----------------------------------------------------------------------------
# Input checks (Python-level, at trace time).
# ----------------------------------------------------------------------------


def _is_tracer(x):
  return isinstance(x, jax.core.Tracer)


def _embeddings_fields(name, emb):
  if not isinstance(emb, Embeddings):
    raise ValueError(
        f"{name} must be a jest_jax.selection.Embeddings(image, text, "
        f"temperature, bias) or None, got {type(emb).__name__}")
  return (("image", emb.image), ("text", emb.text),
          ("temperature", emb.temperature), ("bias", emb.bias))


def _check_embeddings(name, emb):
  """Shapes of one model's embeddings; returns the super-batch size."""
  image_shape = jnp.shape(emb.image)
  text_shape = jnp.shape(emb.text)
  if len(image_shape) != 2:
    raise ValueError(f"{name}.image must be [B, d], got shape {image_shape}")
  if text_shape != image_shape:
    raise ValueError(
        f"{name}.text has shape {text_shape} but {name}.image has "
        f"{image_shape}: row i of both must be the same example's pair")
  for field in ("temperature", "bias"):
    shape = jnp.shape(getattr(emb, field))
    if shape != ():
      raise ValueError(f"{name}.{field} must be a scalar, got shape {shape}")
  return image_shape[0]


def scoring_terms(scoring, learner, reference):
  """The (name, embeddings, sign) terms of a scoring rule."""
  if scoring not in SCORINGS:
    raise ValueError(f"scoring={scoring!r}: use one of {SCORINGS}")
  terms = {
      "learnability": (("learner", learner, 1.0),
                       ("reference", reference, -1.0)),
      "easy_reference": (("reference", reference, -1.0),),
      "hard_learner": (("learner", learner, 1.0),),
  }[scoring]
  for name, emb, _ in terms:
    if emb is None:
      raise ValueError(
          f"scoring={scoring!r} needs the {name}'s embeddings but {name}=None;"
          " pass them, or pick a scoring that does not use them "
          "(hard_learner needs no reference, easy_reference no learner)")
  return terms


def _check_common(learner, reference, *, scoring, loss):
  """Checks shared by every scored selection; returns the super-batch size."""
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r}: use one of {LOSSES}")
  terms = scoring_terms(scoring, learner, reference)
  sizes = {}
  for name, emb, _ in terms:
    _embeddings_fields(name, emb)
    sizes[name] = _check_embeddings(name, emb)
  if len(set(sizes.values())) > 1:
    raise ValueError(
        f"learner and reference see different super-batches: {sizes} rows; "
        "both must embed the same B examples in the same order")
  used = {name: emb for name, emb, _ in terms}
  if not any(_is_tracer(x) for x in jax.tree.leaves(tuple(used.values()))):
    check_finite(used.get("learner"), used.get("reference"))
  return next(iter(sizes.values()))


def _check_sub_batch_size(sub_batch_size, super_batch_size):
  if not isinstance(sub_batch_size, (int, np.integer)) or isinstance(
      sub_batch_size, bool):
    raise ValueError(
        f"sub_batch_size={sub_batch_size!r} must be a static Python int "
        "(shapes are static under jit)")
  if not 1 <= sub_batch_size <= super_batch_size:
    raise ValueError(
        f"sub_batch_size={sub_batch_size} must be in [1, B={super_batch_size}]"
        ": a sub-batch is selected from the super-batch, so make the "
        "super-batch larger or the filter ratio smaller")


def _check_chunks(sub_batch_size, n_chunks):
  if not isinstance(n_chunks, (int, np.integer)) or n_chunks < 1:
    raise ValueError(f"n_chunks={n_chunks!r} must be a positive Python int")
  if sub_batch_size % n_chunks:
    below = sub_batch_size // n_chunks * n_chunks
    raise ValueError(
        f"sub_batch_size={sub_batch_size} is not divisible by "
        f"n_chunks={n_chunks}: use a sub_batch_size that is a multiple of "
        f"{n_chunks} (e.g. {below or n_chunks} or {below + n_chunks}) or an "
        f"n_chunks that divides {sub_batch_size}")


def _check_refine(refine_sweeps, loss):
  if not isinstance(refine_sweeps, (int, np.integer)) or refine_sweeps < 0:
    raise ValueError(
        f"refine_sweeps={refine_sweeps!r} must be a non-negative Python int")
  if refine_sweeps and loss != "sigmoid":
    raise ValueError(
        f"refine_sweeps={refine_sweeps} needs loss='sigmoid': refinement "
        "removes examples from running sums, which log-sum-exp accumulators "
        "cannot do stably; use refine_sweeps=0 with loss='softmax'")


def check_finite(learner, reference):
  """Raises ValueError if any given embedding or scalar is not finite.

  Eager (not for use under `jax.jit`; see `all_finite` there). The public
  selection functions call it themselves when given concrete arrays.

  Args:
    learner: `Embeddings` or None.
    reference: `Embeddings` or None.
  """
  problems = []
  for name, emb in (("learner", learner), ("reference", reference)):
    if emb is None:
      continue
    for field, value in _embeddings_fields(name, emb):
      bad = int(np.size(value) - np.count_nonzero(np.isfinite(np.asarray(
          value, dtype=np.float32))))
      if bad:
        problems.append(f"{name}.{field} has {bad} non-finite entries")
  if problems:
    raise ValueError(
        "non-finite embeddings: " + "; ".join(problems) + ". A model that "
        "produces them has diverged (lower the learning rate, or resume from "
        "an earlier checkpoint) or its input batch is corrupt.")


def all_finite(learner, reference):
  """`bool[]`: every given embedding and scalar is finite (jittable)."""
  leaves = jax.tree.leaves((learner, reference))
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


# ----------------------------------------------------------------------------
# Scores, from embeddings.
# ----------------------------------------------------------------------------


def _softplus(logits):
  """`log(1 + exp(logits))`, as `jax.nn.softplus` (same accuracy).

  Written out because `jax.nn.softplus` (a `logaddexp` with NaN guards) keeps
  XLA:CPU from vectorising the fused softplus-and-sum over a `B x c` block:
  measured 3.5 vs 0.6 ns per element, most of the kernel's time.
  """
  return jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _model_rows(emb, weight):
  temperature = jnp.asarray(emb.temperature, jnp.float32)
  scaled_image = temperature * jnp.asarray(emb.image, jnp.float32)
  text = jnp.asarray(emb.text, jnp.float32)
  return ModelRows(
      pairs=jnp.stack([scaled_image, text]),
      diagonal=jnp.sum(scaled_image * text, axis=-1),
      bias=jnp.asarray(emb.bias, jnp.float32),
      weight=jnp.asarray(weight, jnp.float32))


def _scoring_rows(learner, reference, scoring, gain):
  gain = jnp.asarray(gain, jnp.float32)
  return tuple(_model_rows(emb, sign * gain)
               for _, emb, sign in scoring_terms(scoring, learner, reference))


def _diagonal_scores(models, loss):
  """`[n]` unconditional scores: `s_ii` (sigmoid), 0 (softmax: no negatives)."""
  if loss == "softmax":
    # An example alone has CLIP loss log(1) = 0 in both directions.
    return jnp.zeros_like(models[0].diagonal)
  # Positive pair, z = +1: L_ii = -log_sigmoid(logit) = softplus(-logit).
  return sum(m.weight * _softplus(-(m.diagonal + m.bias)) for m in models)


def partner_rows(models, indices):
  """The partners of a chunk: `[2, c, d]` (text_J, temperature * image_J)."""
  return tuple(jnp.take(m.pairs[::-1], indices, axis=1) for m in models)


def _block_dots(model, chunk):
  """`[2, n, c]`: slot 0 `l_ik`, slot 1 `l_ki` (bias not added)."""
  return jnp.einsum("snd,scd->snc", model.pairs, chunk, precision=_PRECISION)


class _SigmoidKernel:
  """Running sums `acc_i = sum_{k in S} (s_ik + s_ki)` (docs/design.md §1)."""

  def __init__(self, models):
    self.models = models
    self.diagonal = _diagonal_scores(models, "sigmoid")

  def init(self):
    return jnp.zeros_like(self.diagonal)

  def logits(self, acc):
    return self.diagonal + acc

  def self_pairs(self):
    """`[n]` what `update` adds to row i when i is in the chunk itself."""
    return sum(2.0 * m.weight * _softplus(m.diagonal + m.bias)
               for m in self.models)

  def contribution(self, chunks):
    """`[n]` what a chunk's partner rows add to every row's running sum."""
    total = 0.0
    for model, chunk in zip(self.models, chunks):
      # Off-diagonal pairs have z = -1: L = -log_sigmoid(-logit) = softplus.
      pair_losses = _softplus(_block_dots(model, chunk) + model.bias)
      total += model.weight * jnp.sum(pair_losses, axis=(0, 2))
    return total

  def update(self, acc, chunks):
    return acc + self.contribution(chunks)


class _SoftmaxKernel:
  """Running log-sum-exps over the selected set, both directions, per model.

  The conditional score of candidate i is its per-example CLIP loss within
  `S u {i}` (as `losses.softmax_example_losses`), weighted and summed over
  the scoring models:

    l_i(S) = -l_ii + (lse_{k in S u {i}} l_ik + lse_{k in S u {i}} l_ki) / 2,
    l_ik = temperature * <x_i, y_k>,

  so `lse_{k in S} l_ik` (image i against the selected texts) and
  `lse_{k in S} l_ki` (text i against the selected images) are all it needs.
  With `S` empty every score is 0: the first chunk is a uniform draw.
  """

  def __init__(self, models):
    self.models = models

  def init(self):
    return tuple(jnp.full((2,) + m.diagonal.shape, -jnp.inf)
                 for m in self.models)

  def logits(self, lses):
    total = 0.0
    for model, lse in zip(self.models, lses):
      own = model.diagonal
      example_loss = -own + 0.5 * (jnp.logaddexp(lse[0], own) +
                                   jnp.logaddexp(lse[1], own))
      total += model.weight * example_loss
    return total

  def update(self, lses, chunks):
    return tuple(
        jnp.logaddexp(lse, jax.nn.logsumexp(_block_dots(model, chunk), axis=2))
        for model, lse, chunk in zip(self.models, lses, chunks))


def _kernel(models, loss):
  return _SigmoidKernel(models) if loss == "sigmoid" else _SoftmaxKernel(models)


def gumbel_top(key, step, logits, selected, count):
  """Gumbel-top-`count` among the unselected; noise from fold_in(key, step).

  Returns `(int[count] chosen, bool[B] selected with them added)`.
  """
  noise = jax.random.gumbel(jax.random.fold_in(key, step), logits.shape,
                            jnp.float32)
  perturbed = jnp.where(selected, -jnp.inf, logits + noise)
  _, chosen = jax.lax.top_k(perturbed, count)
  return chosen, selected.at[chosen].set(True)


def _anneal_start(marginal_gains):
  """Refinement's first gain factor: where the marginal gains spread by ~1.

  `marginal_gains[i] = s_ii + sum_{k in S, k != i} (s_ik + s_ki)`, what
  example i adds to (or, if selected, contributes to) the batch score.
  Scale-free: at `1 / std` a redraw barely prefers any example, so the first
  sweeps can leave the configuration the chunked pass locked into; where the
  gains already spread by less than 1 nothing is annealed.
  """
  return jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.std(marginal_gains), 1e-30))


# Refinement keeps a configuration only if its batch score beats the best so
# far by this relative margin: below it, the difference is the rounding of the
# running sums, and a "better" batch would be the same set in another order.
_IMPROVEMENT = 1e-6


def _chunked_pass(key, kernel, *, layout, chunk_size, n_chunks,
                  refine_sweeps):
  """The joint draw (+ optional refinement) -> `int32[n_chunks * chunk_size]`.

  Args:
    key: PRNG key (noise convention in the module docstring).
    kernel: `_SigmoidKernel` or `_SoftmaxKernel` over the rows this device
      holds.
    layout: where the rows live (`OneDevice`, or a shard; see `draw`).
    chunk_size: `c`.
    n_chunks: chunks in the pass.
    refine_sweeps: blocked-Gibbs sweeps after the pass (sigmoid only).
  """
  gather = functools.partial(layout.partners, kernel.models)

  def draw_chunk(step, state, selected, scale=1.0):
    logits = scale * layout.to_global(kernel.logits(state))
    return gumbel_top(key, step, logits, selected, chunk_size)

  state = kernel.init()
  first, selected = draw_chunk(0, state, jnp.zeros((layout.n_rows,), bool))

  def next_chunk(carry, step):
    state, selected, previous = carry
    if refine_sweeps:  # Keep each chunk's share, so it can be taken out.
      added = kernel.contribution(gather(previous))
      state = state + added
    else:
      added = None
      state = kernel.update(state, gather(previous))
    chosen, selected = draw_chunk(step, state, selected)
    return (state, selected, chosen), (chosen, added)

  (state, selected, last), (rest, added) = jax.lax.scan(
      next_chunk, (state, selected, first), jnp.arange(1, n_chunks))
  chunks = jnp.concatenate([first[None], rest], axis=0)
  if not refine_sweeps:
    return chunks.reshape(-1).astype(jnp.int32)
  last_added = kernel.contribution(gather(last))
  return _refine(key, kernel, layout, chunks,
                 state=state + last_added, selected=selected,
                 added=jnp.concatenate([added, last_added[None]], axis=0),
                 refine_sweeps=refine_sweeps, gather=gather,
                 draw_chunk=draw_chunk)


def _refine(key, kernel, layout, chunks, *, state, selected, added,
            refine_sweeps, gather, draw_chunk):
  """Annealed blocked Gibbs from the pass's chunks; returns the best batch.

  `added[j]` is chunk j's share of the running sums `state`, so returning a
  chunk to the pool is a subtraction and a redraw costs one `B x c` block,
  as a chunk of the pass does. The batch score of every configuration is
  read off the logits (`0.5 * sum_{i in S} (logit_i + s_ii - self_i)`), and
  the best one seen, the pass's included, is returned: never worse than the
  pass.
  """
  del key  # The noise comes through draw_chunk.
  n_chunks = chunks.shape[0]
  n_steps = refine_sweeps * n_chunks
  # Rows of selected examples also hold their own pair, counted as if it
  # were a negative; `fixed` takes it out and adds the diagonal back.
  self_pairs = layout.to_global(kernel.self_pairs())
  fixed = layout.to_global(kernel.diagonal) - self_pairs
  score = lambda logits, selected: 0.5 * jnp.sum(
      jnp.where(selected, logits + fixed, 0.0))
  logits = layout.to_global(kernel.logits(state))
  start = _anneal_start(logits - jnp.where(selected, self_pairs, 0.0))
  # Geometric from `start` at the first step to exactly 1 at the last.
  scales = start ** ((n_steps - 1 - jnp.arange(n_steps)) / max(n_steps - 1, 1))

  # Blocked Gibbs: return chunk j's examples to the pool and redraw c
  # examples from the conditional given the other b - c (exact Gibbs on
  # p(S) ~ exp(sum_{i,j in S} s_ij) when c = 1), with the logits scaled by
  # a factor rising geometrically to 1 (simulated annealing).
  def redraw(carry, step_scale):
    step, scale = step_scale
    state, selected, chunks, added, best = carry
    slot = step % n_chunks
    old = chunks[slot]
    state = state - added[slot]
    chosen, selected = draw_chunk(n_chunks + step, state,
                                  selected.at[old].set(False), scale)
    new = kernel.contribution(gather(chosen))
    state = state + new
    chunks = chunks.at[slot].set(chosen)
    now = score(layout.to_global(kernel.logits(state)), selected)
    best_score, best_chunks = best
    better = now > best_score + _IMPROVEMENT * jnp.abs(best_score)
    best = (jnp.where(better, now, best_score),
            jnp.where(better, chunks, best_chunks))
    return (state, selected, chunks, added.at[slot].set(new), best), None

  best = (score(logits, selected), chunks)
  (_, _, _, _, (_, chunks)), _ = jax.lax.scan(
      redraw, (state, selected, chunks, added, best),
      (jnp.arange(n_steps), scales))
  return chunks.reshape(-1).astype(jnp.int32)


# ----------------------------------------------------------------------------
# Public selection functions.
# ----------------------------------------------------------------------------


def joint_select(key, learner, reference, *, sub_batch_size,
                 n_chunks=DEFAULT_N_CHUNKS, scoring="learnability",
                 gain=DEFAULT_GAIN, loss="sigmoid", refine_sweeps=0):
  """JEST: draws a sub-batch jointly, chunk by chunk (docs/design.md §1).

  Args:
    key: PRNG key.
    learner: the learner's `Embeddings` of the super-batch, or None for
      `scoring="easy_reference"`.
    reference: the reference model's `Embeddings` (same examples, same
      order), or None for `scoring="hard_learner"`.
    sub_batch_size: `b`, a static int, divisible by `n_chunks`, `<= B`.
    n_chunks: chunks of `c = b / n_chunks` drawn in turn (static).
    scoring: "learnability" (default), "easy_reference" or "hard_learner".
    gain: inverse temperature of the draw: every score is multiplied by it
      (DEFAULT_GAIN, 1, is the unit-free scale; see its comment).
    loss: "sigmoid" (pair scores `s_ij`) or "softmax" (a candidate's
      per-example CLIP loss within the selected set plus itself, both
      directions, learner minus reference; see `_SoftmaxKernel`).
    refine_sweeps: after the chunked pass, this many annealed blocked-Gibbs
      sweeps: each chunk in turn goes back to the pool and `c` examples are
      redrawn by Gumbel-top-c from `scale_t * logits` given the other
      `b - c`. `scale_t` rises geometrically over the `refine_sweeps *
      n_chunks` steps from `min(1, 1 / std)` of every example's marginal
      gain after the pass (`_anneal_start`) to exactly 1 at the last step.
      The batch with the highest batch score seen (the pass's own included)
      is returned, so refinement is never worse than the pass. A sweep costs
      about one pass. Sigmoid only. Default 0, the paper's algorithm; the
      README's selection-quality table gives what sweeps buy and cost, and
      `selection_diagnostics`' `joint_to_diagonal_spread` tells where joint
      terms matter enough for them to pay.

  Returns:
    `int32[sub_batch_size]` distinct indices into the super-batch, in chunk
    order.
  """
  return select(key, learner, reference, sub_batch_size=sub_batch_size,
                method="joint", scoring=scoring, gain=gain, n_chunks=n_chunks,
                loss=loss, refine_sweeps=refine_sweeps)


def _scores_against_set(row_models, set_models, loss, block_size):
  """`[n]` per-example scores of rows within a set that contains them.

  softmax: the row's CLIP loss against every member of the set (both
  directions); sigmoid: the row's share of `sum_{i,j in set} s_ij`
  (`s_ii + (sum_j s_ij + s_ji) / 2`), so the shares sum to the batch score.
  Rows are processed `block_size` at a time: memory `O(block_size * |set|)`.
  """
  n = row_models[0].diagonal.shape[0]
  n_blocks = -(-n // block_size)
  rows = jnp.minimum(jnp.arange(n_blocks * block_size), n - 1).reshape(
      n_blocks, block_size)

  def block_scores(block):
    total = 0.0
    for row_model, set_model in zip(row_models, set_models):
      dots = jnp.einsum("srd,snd->srn", row_model.pairs[:, block],
                        set_model.pairs[::-1], precision=_PRECISION)
      own = row_model.diagonal[block]
      if loss == "softmax":
        lse = jax.nn.logsumexp(dots, axis=2)
        score = -own + 0.5 * (lse[0] + lse[1])
      else:
        own_logit = own + row_model.bias
        # Every pair counted as a negative, then the row's own pair fixed.
        negatives = 0.5 * jnp.sum(_softplus(dots + row_model.bias),
                                  axis=(0, 2))
        score = (negatives - _softplus(own_logit) +
                 _softplus(-own_logit))
      total += row_model.weight * score
    return total

  if n_blocks == 1:
    return block_scores(rows[0])[:n]
  return jax.lax.map(block_scores, rows).reshape(-1)[:n]


def independent_select(key, learner, reference, *, sub_batch_size,
                       scoring="learnability", gain=DEFAULT_GAIN, mode="topk",
                       loss="sigmoid", block_size=DEFAULT_BLOCK_SIZE):
  """Selection on per-example scores alone (the paper's baselines).

  RHO-LOSS-style prioritisation is `scoring="learnability"`, CLIP-score
  filtering `scoring="easy_reference"`.

  Args:
    key: PRNG key (unused by `mode="topk"`).
    learner, reference: `Embeddings` or None, as in `joint_select`.
    sub_batch_size: `b`, a static int `<= B`.
    scoring, gain: as in `joint_select`.
    mode: "topk" (the `b` highest scores) or "sample" (Gumbel-top-b on the
      scores with noise `fold_in(key, 0)`: identical to `joint_select` with
      `n_chunks=1` for the sigmoid loss).
    loss: "sigmoid" scores example i by `s_ii`. "softmax" scores it by its
      CLIP loss against the whole super-batch (an example alone has no
      negatives): `O(B^2 d)` work, done in row blocks of `block_size`.
    block_size: rows per block for the softmax scores (static).

  Returns:
    `int32[sub_batch_size]` distinct indices (topk: by descending score).
  """
  if mode not in INDEPENDENT_MODES:
    raise ValueError(f"mode={mode!r}: use one of {INDEPENDENT_MODES}")
  return select(key, learner, reference, sub_batch_size=sub_batch_size,
                method=f"independent_{mode}", scoring=scoring, gain=gain,
                loss=loss, block_size=block_size)


def uniform_select(key, super_batch_size, sub_batch_size):
  """IID baseline: `int32[sub_batch_size]` distinct uniform indices < B."""
  _check_sub_batch_size(sub_batch_size, super_batch_size)
  return jax.random.permutation(key, super_batch_size)[:sub_batch_size].astype(
      jnp.int32)


@functools.partial(jax.jit, static_argnames=("scoring", "loss", "block_size"))
def _batch_score(learner, reference, indices, gain, *, scoring, loss,
                 block_size):
  pick = lambda emb: None if emb is None else emb._replace(
      image=jnp.take(emb.image, indices, axis=0),
      text=jnp.take(emb.text, indices, axis=0))
  models = _scoring_rows(pick(learner), pick(reference), scoring, gain)
  return jnp.sum(_scores_against_set(models, models, loss, block_size))


def batch_score(learner, reference, indices, *, scoring="learnability",
                gain=DEFAULT_GAIN, loss="sigmoid",
                block_size=DEFAULT_BLOCK_SIZE):
  """The summed score of a chosen sub-batch: what joint sampling makes large.

  sigmoid: `sum_{i, j in S} s_ij` (all pairs of the sub-batch, diagonal
  included). softmax: `sum_{i in S}` of the scoring's weighted per-example
  CLIP losses within `S` (learnability: learner minus reference).

  Args:
    learner, reference: `Embeddings` of the super-batch, or None as in
      `joint_select`.
    indices: `int[b]` indices into the super-batch (distinct).
    scoring, gain, loss: as in `joint_select`.
    block_size: rows per block; memory is `O(block_size * b)`.

  Returns:
    float32 scalar.
  """
  _check_common(learner, reference, scoring=scoring, loss=loss)
  if jnp.ndim(indices) != 1:
    raise ValueError(f"indices must be int[b], got shape {jnp.shape(indices)}")
  return _batch_score(learner, reference, indices, gain, scoring=scoring,
                      loss=loss, block_size=int(block_size))


@functools.partial(jax.jit, static_argnames=("scoring", "block_size"))
def _joint_spread(learner, reference, indices, *, scoring, block_size):
  pick = lambda emb: None if emb is None else emb._replace(
      image=jnp.take(emb.image, indices, axis=0),
      text=jnp.take(emb.text, indices, axis=0))
  models = _scoring_rows(pick(learner), pick(reference), scoring, 1.0)
  diagonal = _diagonal_scores(models, "sigmoid")
  # A member's share is s_ii + (sum_{k != i} s_ik + s_ki) / 2.
  joint = 2.0 * (_scores_against_set(models, models, "sigmoid", block_size) -
                 diagonal)
  return jnp.std(joint) / jnp.maximum(jnp.std(diagonal), 1e-30)


def selection_diagnostics(key, learner, reference, indices, *,
                          scoring="learnability", loss="sigmoid"):
  """Batch scores (at gain 1, in loss units) of the selection and baselines.

  Returns a dict of float32 scalars: `selected` (the given indices),
  `uniform` (a uniform sub-batch of the same size, drawn with `key`),
  `independent_topk` (the top-b by per-example score) and, for the sigmoid
  loss, `joint_to_diagonal_spread`: over the uniform sub-batch, the std of
  the joint terms `sum_{k != i} (s_ik + s_ki)` over the std of `s_ii`. Near
  0, joint selection reduces to independent selection; well above 1 (hard
  negatives) the chunked pass can fall far short of a brute-force search
  and `refine_sweeps` pays (benchmarks/selection_quality.py). Jittable; the
  brute-force comparison itself is slow and lives in the benchmark.
  """
  terms = scoring_terms(scoring, learner, reference)
  size = _check_embeddings(terms[0][0], terms[0][1])
  sub_batch_size = jnp.shape(indices)[0]
  uniform = uniform_select(key, size, sub_batch_size)
  score = functools.partial(batch_score, learner, reference, scoring=scoring,
                            gain=1.0, loss=loss)
  report = {
      "selected": score(indices),
      "uniform": score(uniform),
      "independent_topk": score(independent_select(
          key, learner, reference, sub_batch_size=sub_batch_size,
          scoring=scoring, gain=1.0, loss=loss)),
  }
  if loss == "sigmoid":
    report["joint_to_diagonal_spread"] = _joint_spread(
        learner, reference, uniform, scoring=scoring,
        block_size=DEFAULT_BLOCK_SIZE)
  return report


class OneDevice(NamedTuple):
  """A layout for `draw`: the whole super-batch of `n_rows` on this device.

  A layout says where the rows live; `sharded` has one for a shard of them.
  It provides `n_rows` (the global `B`), `to_global(values)` (this device's
  per-row `[n]` values -> the global `[B]`), `partners(models, indices)`
  (the partner rows of global `indices`, as `partner_rows` on the device
  that holds them) and `everyone(models)` (`ModelRows` over all `B` rows).
  """
  n_rows: int

  def to_global(self, values):
    return values

  def partners(self, models, indices):
    return partner_rows(models, indices)

  def everyone(self, models):
    return models


def check_models(learner, reference, *, method, scoring, loss):
  """Checks a method's embeddings (eagerly, also their values); returns B."""
  if method not in METHODS:
    raise ValueError(f"method={method!r}: use one of {METHODS}")
  if method != "uniform":
    return _check_common(learner, reference, scoring=scoring, loss=loss)
  given = learner if learner is not None else reference
  if given is None:
    raise ValueError("method='uniform' takes the super-batch size from the "
                     "embeddings; pass learner or reference (or call "
                     "uniform_select(key, super_batch_size, sub_batch_size))")
  name = "learner" if learner is not None else "reference"
  _embeddings_fields(name, given)
  return _check_embeddings(name, given)


def check_sizes(super_batch_size, sub_batch_size, *, method, n_chunks,
                refine_sweeps, loss):
  """Checks the static sizes of one selection of `b` from `B` rows."""
  _check_sub_batch_size(sub_batch_size, super_batch_size)
  if method == "joint":
    _check_chunks(sub_batch_size, n_chunks)
    _check_refine(refine_sweeps, loss)


def draw(key, learner, reference, gain, *, layout, method, sub_batch_size,
         scoring, n_chunks, loss, refine_sweeps, block_size):
  """Every method, on any layout: `int32[sub_batch_size]` global indices.

  The one dispatch on `method` and `loss`, traced (inside `jax.jit` or
  `shard_map`) after `check_models` and `check_sizes`. `learner` and
  `reference` hold the rows this device has; `layout` says how they relate
  to the global super-batch (`OneDevice`, or a shard in `sharded`).
  """
  if method == "uniform":
    return uniform_select(key, layout.n_rows, sub_batch_size)
  models = _scoring_rows(learner, reference, scoring, gain)
  if method == "joint":
    return _chunked_pass(key, _kernel(models, loss), layout=layout,
                         chunk_size=sub_batch_size // n_chunks,
                         n_chunks=n_chunks, refine_sweeps=refine_sweeps)
  if loss == "sigmoid":
    scores = _diagonal_scores(models, loss)
  else:  # An example alone has no negatives: score it against everyone.
    scores = _scores_against_set(models, layout.everyone(models), loss,
                                 block_size)
  scores = layout.to_global(scores)
  if method == "independent_topk":
    return jax.lax.top_k(scores, sub_batch_size)[1].astype(jnp.int32)
  return gumbel_top(key, 0, scores, jnp.zeros(scores.shape, bool),
                    sub_batch_size)[0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=(
    "method", "sub_batch_size", "scoring", "n_chunks", "loss",
    "refine_sweeps", "block_size"))
def _select(key, learner, reference, gain, **static):
  given = learner if learner is not None else reference
  return draw(key, learner, reference, gain,
              layout=OneDevice(given.image.shape[0]), **static)


def select(key, learner, reference, *, sub_batch_size, method="joint",
           scoring="learnability", gain=DEFAULT_GAIN,
           n_chunks=DEFAULT_N_CHUNKS, loss="sigmoid", refine_sweeps=0,
           block_size=DEFAULT_BLOCK_SIZE):
  """One entry point for a trainer: selection by `method` name.

  Args:
    key, learner, reference, sub_batch_size, scoring, gain, n_chunks, loss,
      refine_sweeps: as in `joint_select` (the independent methods ignore
      `n_chunks` and `refine_sweeps`; "uniform" ignores all scoring
      arguments and takes `B` from whichever embeddings are given).
    method: "joint", "independent_topk", "independent_sample" or "uniform".
    block_size: as in `independent_select`.

  Returns:
    `int32[sub_batch_size]` indices into the super-batch.
  """
  size = check_models(learner, reference, method=method, scoring=scoring,
                      loss=loss)
  check_sizes(size, sub_batch_size, method=method, n_chunks=n_chunks,
              refine_sweeps=refine_sweeps, loss=loss)
  if method == "uniform":
    learner, reference = (learner, None) if learner is not None else (
        None, reference)
  return _select(key, learner, reference, jnp.asarray(gain, jnp.float32),
                 method=method, sub_batch_size=int(sub_batch_size),
                 scoring=scoring, n_chunks=int(n_chunks), loss=loss,
                 refine_sweeps=int(refine_sweeps), block_size=int(block_size))
