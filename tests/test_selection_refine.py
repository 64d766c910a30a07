"""Refinement is never worse than the chunked pass it starts from.

A property over many random regimes (cluster count, share of unrelated
captions, temperature, bias, model noise, gain), at small fixed shapes so
that one compilation serves them all.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jest_jax import selection

SIZE, SUB, DIM = 96, 24, 8


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_regime(rng):
  """(learner, reference, gain) with hard negatives of random strength."""
  clusters = int(rng.integers(2, SIZE // 3))
  centres = _unit(rng.normal(size=(clusters, DIM)))
  cluster = rng.integers(clusters, size=SIZE)
  specific = _unit(rng.normal(size=(SIZE, DIM)))
  caption_of = np.arange(SIZE)
  unrelated = rng.random(SIZE) < rng.uniform(0.0, 0.5)
  caption_of[unrelated] = rng.integers(SIZE, size=unrelated.sum())
  temperature = rng.uniform(5.0, 30.0)
  bias = rng.uniform(-14.0, -4.0)

  def model(centre_weight, noise):
    concept = _unit(centre_weight * centres[cluster] + specific)
    image = _unit(concept + noise * rng.normal(size=concept.shape))
    text = _unit(concept[caption_of] + noise * rng.normal(size=concept.shape))
    return selection.Embeddings(jnp.asarray(image, jnp.float32),
                                jnp.asarray(text, jnp.float32),
                                jnp.float32(temperature), jnp.float32(bias))

  learner = model(rng.uniform(0.5, 3.0), rng.uniform(0.05, 0.5))
  reference = model(rng.uniform(0.0, 0.5), 0.05)
  gain = float(np.exp(rng.uniform(np.log(0.3), np.log(100.0))))
  return learner, reference, gain


@jax.jit
def _pass_and_refined(key, learner, reference, gain):
  draw = lambda sweeps: selection.joint_select(
      key, learner, reference, sub_batch_size=SUB, n_chunks=4, gain=gain,
      refine_sweeps=sweeps)
  score = lambda idx: selection.batch_score(learner, reference, idx)
  return score(draw(0)), score(draw(1)), score(draw(3))


def test_refinement_is_never_worse_than_the_pass_over_random_regimes():
  rng = np.random.default_rng(0)
  gaps = []
  for trial in range(60):
    learner, reference, gain = random_regime(rng)
    plain, one, three = map(float, _pass_and_refined(
        jax.random.key(trial), learner, reference, gain))
    # Rounding of the kernel's running sums against batch_score's own sum.
    slack = 1e-5 * abs(plain) + 1e-4
    assert one >= plain - slack, (trial, gain, plain, one)
    assert three >= plain - slack, (trial, gain, plain, three)
    gaps.append(three - plain)
  # The property is not met by returning the pass: refinement does improve.
  assert np.mean(np.array(gaps) > 1e-3) > 0.3
