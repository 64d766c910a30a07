"""Tests of jest_jax.selection on one device, against plain NumPy twins.

The NumPy functions below implement docs/design.md §1 literally (a B x B score matrix,
one chunk at a time, argsort of noisy logits) and are fed the exact Gumbel
noise the kernel uses (`gumbel(fold_in(key, step), (B,))`), so indices must
agree exactly (float ties aside, which these sizes do not produce).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jest_jax import selection
from jest_jax.selection import materialised

SIZE = 64      # Super-batch B.
SUB = 16       # Sub-batch b.


# ---------------------------------------------------------------------------
# Test data and NumPy twins.
# ---------------------------------------------------------------------------


def _normalise(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_models(seed, size=SIZE, dim=8, clusters=4):
  """(learner, reference) embeddings of the same clustered examples.

  Clusters make off-diagonal pairs similar (hard negatives), so the joint
  terms matter; the learner is noisier than the reference.
  """
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  concepts = centres[rng.integers(clusters, size=size)] + 0.6 * rng.normal(
      size=(size, dim))

  def model(noise, temperature, bias):
    image = _normalise(concepts + noise * rng.normal(size=concepts.shape))
    text = _normalise(concepts + noise * rng.normal(size=concepts.shape))
    return selection.Embeddings(jnp.asarray(image, jnp.float32),
                                jnp.asarray(text, jnp.float32),
                                jnp.float32(temperature), jnp.float32(bias))

  return model(0.9, 8.0, -4.0), model(0.3, 12.0, -6.0)


def _np(emb):
  return (np.asarray(emb.image, np.float64), np.asarray(emb.text, np.float64),
          float(emb.temperature), float(emb.bias))


def _terms(scoring, learner, reference, gain):
  return {"learnability": [(gain, learner), (-gain, reference)],
          "easy_reference": [(-gain, reference)],
          "hard_learner": [(gain, learner)]}[scoring]


def np_score_matrix(learner, reference, scoring, gain):
  """docs/design.md §1: s = weighted L_ij = -log_sigmoid(z_ij (t <x_i, y_j> + b))."""
  total = 0.0
  for weight, emb in _terms(scoring, learner, reference, gain):
    image, text, temperature, bias = _np(emb)
    logits = temperature * image @ text.T + bias
    labels = 2.0 * np.eye(len(image)) - 1.0
    total = total + weight * np.logaddexp(0.0, -labels * logits)
  return total


def np_softmax_conditional(learner, reference, scoring, gain, selected):
  """Each candidate's weighted CLIP loss within selected + itself."""
  total = np.zeros(len(selected))
  for weight, emb in _terms(scoring, learner, reference, gain):
    image, text, temperature, _ = _np(emb)
    logits = temperature * image @ text.T
    for i in range(len(selected)):
      members = np.flatnonzero(selected | (np.arange(len(selected)) == i))
      row = np.logaddexp.reduce(logits[i, members])
      col = np.logaddexp.reduce(logits[members, i])
      total[i] += weight * (-logits[i, i] + 0.5 * (row + col))
  return total


def noise(key, step, size=SIZE):
  return np.asarray(jax.random.gumbel(jax.random.fold_in(key, step), (size,)),
                    np.float64)


def _top(key, step, logits, selected, count):
  perturbed = np.where(selected, -np.inf,
                       logits + noise(key, step, len(logits)))
  return np.argsort(-perturbed, kind="stable")[:count]


def np_joint_select(key, learner, reference, *, sub_batch_size, n_chunks,
                    scoring="learnability", gain=1.0, loss="sigmoid",
                    refine_sweeps=0):
  """Joint sampling (+ annealed blocked Gibbs, best batch kept), stepwise."""
  size = learner.image.shape[0] if learner is not None else (
      reference.image.shape[0])
  chunk = sub_batch_size // n_chunks
  scores = np_score_matrix(learner, reference, scoring, gain) if (
      loss == "sigmoid") else None

  def logits(selected):
    if loss == "softmax":
      return np_softmax_conditional(learner, reference, scoring, gain, selected)
    chosen = np.flatnonzero(selected)
    return (np.diagonal(scores) + scores[:, chosen].sum(axis=1) +
            scores[chosen, :].sum(axis=0))

  selected = np.zeros(size, bool)
  chunks = []
  for step in range(n_chunks):
    chosen = _top(key, step, logits(selected), selected, chunk)
    selected[chosen] = True
    chunks.append(chosen)
  n_steps = refine_sweeps * n_chunks
  if n_steps:
    # Spread of every example's marginal gain s_ii + sum_{k in S, k != i}.
    chosen = np.flatnonzero(selected)
    gains = (np.diagonal(scores) + scores[:, chosen].sum(axis=1) +
             scores[chosen, :].sum(axis=0) -
             np.where(selected, 2.0 * np.diagonal(scores), 0.0))
    start = min(1.0, 1.0 / np.std(gains))
  batch = lambda: scores[np.ix_(np.concatenate(chunks),
                                 np.concatenate(chunks))].sum()
  best, best_chunks = (batch(), list(chunks)) if n_steps else (None, chunks)
  for step in range(n_steps):
    # Annealed: the gain factor rises geometrically from `start` to 1.
    scale = start ** ((n_steps - 1 - step) / max(n_steps - 1, 1))
    slot = step % n_chunks
    selected[chunks[slot]] = False
    chunks[slot] = _top(key, n_chunks + step, scale * logits(selected),
                        selected, chunk)
    selected[chunks[slot]] = True
    # The best batch seen is kept (a margin below rounding, as the kernel).
    if batch() > best + 1e-6 * abs(best):
      best, best_chunks = batch(), list(chunks)
  chunks = best_chunks
  return np.concatenate(chunks)


def np_batch_score(learner, reference, indices, scoring, gain, loss):
  indices = np.asarray(indices)
  if loss == "sigmoid":
    scores = np_score_matrix(learner, reference, scoring, gain)
    return scores[np.ix_(indices, indices)].sum()
  pick = lambda emb: None if emb is None else emb._replace(
      image=emb.image[indices], text=emb.text[indices])
  return np_softmax_conditional(pick(learner), pick(reference), scoring, gain,
                                np.ones(len(indices), bool)).sum()


@pytest.fixture(scope="module")
def models():
  return make_models(0)


def _given(scoring, learner, reference):
  """The embeddings a scoring needs (None for the unused model)."""
  return (None if scoring == "easy_reference" else learner,
          None if scoring == "hard_learner" else reference)


# ---------------------------------------------------------------------------
# The matrix-free kernel against the NumPy twin and the materialised form.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("scoring", selection.SCORINGS)
def test_joint_select_matches_numpy_spec(models, scoring, loss):
  learner, reference = _given(scoring, *models)
  key = jax.random.key(1)
  got = selection.joint_select(key, learner, reference, sub_batch_size=SUB,
                               n_chunks=4, scoring=scoring, gain=2.0, loss=loss)
  want = np_joint_select(key, learner, reference, sub_batch_size=SUB,
                         n_chunks=4, scoring=scoring, gain=2.0, loss=loss)
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("n_chunks", [1, 16])
def test_joint_select_matches_numpy_spec_at_chunk_extremes(models, n_chunks):
  key = jax.random.key(2)
  got = selection.joint_select(key, *models, sub_batch_size=SUB,
                               n_chunks=n_chunks)
  want = np_joint_select(key, *models, sub_batch_size=SUB, n_chunks=n_chunks)
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_materialised_baseline_matches_numpy_spec(models, loss):
  key = jax.random.key(3)
  got = materialised.joint_select(key, *models, sub_batch_size=SUB, n_chunks=4,
                                  loss=loss)
  want = np_joint_select(key, *models, sub_batch_size=SUB, n_chunks=4,
                         loss=loss)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_matrix_free_matches_materialised_on_a_larger_super_batch():
  learner, reference = make_models(5, size=512, dim=16)
  key = jax.random.key(4)
  got = selection.joint_select(key, learner, reference, sub_batch_size=128,
                               n_chunks=16, gain=3.0)
  want = materialised.joint_select(key, learner, reference, sub_batch_size=128,
                                   n_chunks=16, gain=3.0)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_joint_select_never_builds_a_super_batch_square_array():
  size = 512
  learner, reference = make_models(6, size=size, dim=16)
  trace = lambda select: str(jax.make_jaxpr(lambda k, l, r: select(
      k, l, r, sub_batch_size=64, n_chunks=8))(jax.random.key(0), learner,
                                                reference))
  jaxpr = trace(selection.joint_select)
  materialised_jaxpr = trace(materialised.joint_select)
  square = f"[{size},{size}]"
  assert square in materialised_jaxpr  # The check can see a B x B array.
  assert square not in jaxpr


def test_refinement_matches_numpy_blocked_gibbs(models):
  key = jax.random.key(7)
  got = selection.joint_select(key, *models, sub_batch_size=SUB, n_chunks=4,
                               gain=2.0, refine_sweeps=2)
  want = np_joint_select(key, *models, sub_batch_size=SUB, n_chunks=4,
                         gain=2.0, refine_sweeps=2)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_refinement_raises_the_mean_batch_score_at_high_gain(models):
  keys = jax.random.split(jax.random.key(8), 16)

  def mean_score(sweeps):
    draw = jax.vmap(lambda k: selection.joint_select(
        k, *models, sub_batch_size=SUB, n_chunks=SUB, gain=30.0,
        refine_sweeps=sweeps))
    return np.mean([selection.batch_score(*models, idx, gain=1.0)
                    for idx in draw(keys)])

  assert mean_score(2) > mean_score(0)


@pytest.mark.parametrize("method", selection.METHODS)
def test_every_method_returns_distinct_in_range_int32_indices(models, method):
  indices = selection.select(jax.random.key(9), *models, sub_batch_size=32,
                             method=method, n_chunks=8)
  assert indices.dtype == jnp.int32 and indices.shape == (32,)
  assert len(set(np.asarray(indices).tolist())) == 32
  assert 0 <= int(indices.min()) and int(indices.max()) < SIZE


def test_examples_with_higher_learnability_are_selected_more_often():
  # A strongly negative bias makes off-diagonal losses tiny (softplus(logit)
  # with logit <= t - 10), so selection odds follow the diagonal s_ii.
  learner, reference = (m._replace(temperature=jnp.float32(8.0),
                                   bias=jnp.float32(-10.0))
                        for m in make_models(10, size=SIZE, dim=32))
  keys = jax.random.split(jax.random.key(11), 400)
  draws = jax.vmap(lambda k: selection.joint_select(
      k, learner, reference, sub_batch_size=SUB, n_chunks=4))(keys)
  frequency = np.bincount(np.asarray(draws).ravel(), minlength=SIZE) / 400
  diagonal = np.diagonal(np_score_matrix(learner, reference, "learnability",
                                         1.0))
  ranks = lambda v: np.argsort(np.argsort(v))
  spearman = np.corrcoef(ranks(diagonal), ranks(frequency))[0, 1]
  order = np.argsort(diagonal)
  assert spearman > 0.8
  assert frequency[order[-8:]].mean() > 3 * frequency[order[:8]].mean()


# ---------------------------------------------------------------------------
# Baselines, batch score, diagnostics, dispatcher.
# ---------------------------------------------------------------------------


def test_independent_topk_takes_the_highest_diagonal_scores(models):
  got = selection.independent_select(jax.random.key(0), *models,
                                     sub_batch_size=SUB, mode="topk")
  diagonal = np.diagonal(np_score_matrix(*models, "learnability", 1.0))
  np.testing.assert_array_equal(np.asarray(got), np.argsort(-diagonal)[:SUB])


def test_independent_sample_equals_joint_select_with_one_chunk(models):
  key = jax.random.key(12)
  sampled = selection.independent_select(key, *models, sub_batch_size=SUB,
                                         mode="sample", gain=2.0)
  joint = selection.joint_select(key, *models, sub_batch_size=SUB, n_chunks=1,
                                 gain=2.0)
  np.testing.assert_array_equal(np.asarray(sampled), np.asarray(joint))


def test_independent_softmax_ranks_by_clip_loss_within_the_super_batch(models):
  got = selection.independent_select(jax.random.key(0), *models,
                                     sub_batch_size=SUB, loss="softmax",
                                     block_size=24)
  losses = np_softmax_conditional(*models, "learnability", 1.0,
                                  np.ones(SIZE, bool))
  np.testing.assert_array_equal(np.asarray(got), np.argsort(-losses)[:SUB])


def test_uniform_select_covers_the_super_batch_evenly():
  keys = jax.random.split(jax.random.key(13), 500)
  draws = np.asarray(jax.vmap(
      lambda k: selection.uniform_select(k, SIZE, SUB))(keys))
  assert all(len(set(row)) == SUB for row in draws.tolist())
  counts = np.bincount(draws.ravel(), minlength=SIZE)
  expected = 500 * SUB / SIZE  # 125 per example.
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("scoring", selection.SCORINGS)
def test_batch_score_matches_numpy_in_blocks(models, scoring, loss):
  learner, reference = _given(scoring, *models)
  indices = np.random.default_rng(14).permutation(SIZE)[:20]
  got = selection.batch_score(learner, reference, jnp.asarray(indices),
                              scoring=scoring, gain=1.5, loss=loss,
                              block_size=8)  # 3 blocks, the last padded.
  want = np_batch_score(learner, reference, indices, scoring, 1.5, loss)
  np.testing.assert_allclose(float(got), want, rtol=1e-4, atol=1e-3)


def test_diagnostics_score_the_selection_and_both_baselines(models):
  key = jax.random.key(15)
  indices = selection.joint_select(key, *models, sub_batch_size=SUB, gain=5.0,
                                   n_chunks=4)
  report = selection.selection_diagnostics(key, *models, indices)
  score = lambda idx: np_batch_score(*models, idx, "learnability", 1.0,
                                     "sigmoid")
  np.testing.assert_allclose(float(report["selected"]), score(indices),
                             rtol=1e-4)
  np.testing.assert_allclose(
      float(report["uniform"]),
      score(selection.uniform_select(key, SIZE, SUB)), rtol=1e-4)
  np.testing.assert_allclose(
      float(report["independent_topk"]),
      score(selection.independent_select(key, *models, sub_batch_size=SUB)),
      rtol=1e-4)
  assert report["selected"] > report["uniform"]


def test_diagnostics_joint_spread_matches_numpy(models):
  key = jax.random.key(19)
  indices = selection.joint_select(key, *models, sub_batch_size=SUB, n_chunks=4)
  report = selection.selection_diagnostics(key, *models, indices)
  uniform = np.asarray(selection.uniform_select(key, SIZE, SUB))
  scores = np_score_matrix(*models, "learnability", 1.0)[np.ix_(uniform,
                                                                 uniform)]
  diagonal = np.diagonal(scores)
  joint = scores.sum(axis=0) + scores.sum(axis=1) - 2 * diagonal
  np.testing.assert_allclose(float(report["joint_to_diagonal_spread"]),
                             joint.std() / diagonal.std(), rtol=1e-3)


@pytest.mark.parametrize("method", selection.METHODS)
def test_select_dispatches_to_the_named_method(models, method):
  key = jax.random.key(16)
  got = selection.select(key, *models, sub_batch_size=SUB, method=method,
                         n_chunks=4, gain=2.0)
  want = {
      "joint": lambda: selection.joint_select(key, *models, sub_batch_size=SUB,
                                              n_chunks=4, gain=2.0),
      "independent_topk": lambda: selection.independent_select(
          key, *models, sub_batch_size=SUB, gain=2.0, mode="topk"),
      "independent_sample": lambda: selection.independent_select(
          key, *models, sub_batch_size=SUB, gain=2.0, mode="sample"),
      "uniform": lambda: selection.uniform_select(key, SIZE, SUB),
  }[method]()
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------
# Transformations.
# ---------------------------------------------------------------------------


def test_joint_select_under_jit_equals_the_eager_call(models):
  key = jax.random.key(17)

  @jax.jit
  def step(key, learner, reference, gain):
    return selection.select(key, learner, reference, sub_batch_size=SUB,
                            method="joint", n_chunks=4, gain=gain)

  np.testing.assert_array_equal(
      np.asarray(step(key, *models, 2.0)),
      np.asarray(selection.joint_select(key, *models, sub_batch_size=SUB,
                                        n_chunks=4, gain=2.0)))


def test_vmap_over_groups_equals_one_call_per_group():
  groups = [make_models(seed, size=32) for seed in (20, 21, 22)]
  stack = lambda i: jax.tree.map(lambda *x: jnp.stack(x),
                                 *[g[i] for g in groups])
  keys = jax.random.split(jax.random.key(18), 3)
  batched = jax.vmap(lambda k, l, r: selection.joint_select(
      k, l, r, sub_batch_size=8, n_chunks=2))(keys, stack(0), stack(1))
  for key, (learner, reference), got in zip(keys, groups, batched):
    want = selection.joint_select(key, learner, reference, sub_batch_size=8,
                                  n_chunks=2)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------


def _bad_text_shape(models):
  learner, reference = models
  return learner._replace(text=learner.text[:, :4]), reference


def _bad_sizes(models):
  learner, reference = models
  return learner._replace(image=learner.image[:32], text=learner.text[:32]), (
      reference)


@pytest.mark.parametrize("change, kwargs, message", [
    (None, dict(sub_batch_size=20, n_chunks=16), "sub_batch_size=20 is not "
     "divisible by n_chunks=16: use a sub_batch_size that is a multiple of 16"),
    (None, dict(sub_batch_size=128, n_chunks=16), r"sub_batch_size=128 must be "
     r"in \[1, B=64\]"),
    (None, dict(sub_batch_size=SUB, scoring="hardest"), "scoring='hardest'"),
    (None, dict(sub_batch_size=SUB, loss="hinge"), "loss='hinge'"),
    (None, dict(sub_batch_size=SUB, loss="softmax", refine_sweeps=1),
     "refine_sweeps=1 needs loss='sigmoid'"),
    (_bad_text_shape, dict(sub_batch_size=SUB), r"learner.text has shape"),
    (_bad_sizes, dict(sub_batch_size=SUB), "different super-batches"),
    (lambda m: (None, m[1]), dict(sub_batch_size=SUB),
     "scoring='learnability' needs the learner's embeddings but learner=None"),
])
def test_bad_arguments_raise_one_clear_value_error(models, change, kwargs,
                                                   message):
  learner, reference = change(models) if change else models
  with pytest.raises(ValueError, match=message):
    selection.joint_select(jax.random.key(0), learner, reference, **kwargs)


def test_non_finite_embeddings_raise_when_called_eagerly(models):
  learner, reference = models
  broken = reference._replace(image=reference.image.at[3, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="reference.image has 1 non-finite"):
    selection.joint_select(jax.random.key(0), learner, broken,
                           sub_batch_size=SUB)


def test_all_finite_flags_non_finite_embeddings_under_jit(models):
  learner, reference = models
  flag = jax.jit(selection.all_finite)
  assert bool(flag(learner, reference))
  assert not bool(flag(learner._replace(bias=jnp.float32(jnp.inf)), reference))


def test_uniform_method_without_embeddings_names_the_fix():
  with pytest.raises(ValueError, match="pass learner or reference"):
    selection.select(jax.random.key(0), None, None, sub_batch_size=SUB,
                     method="uniform")
