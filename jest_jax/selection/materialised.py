"""The paper's form of joint selection: build the `B x B` score matrix.

The tests' oracle and the benchmarks' baseline; never used by the trainer
(at the paper's B = 163,840 the matrix is ~100 GB). Same semantics and the
same noise convention as `core.joint_select` (sigmoid and softmax, no
refinement), written to be obvious rather than fast.
"""

import functools

import jax
import jax.numpy as jnp

from jest_jax import losses
from jest_jax.selection import core


def score_matrix(learner, reference, *, scoring, gain):
  """`[B, B]` sigmoid pair scores `s_ij` (docs/design.md §1)."""
  total = 0.0
  for _, emb, sign in core.scoring_terms(scoring, learner, reference):
    pair_losses = losses.sigmoid_pair_losses(
        jnp.asarray(emb.image, jnp.float32), jnp.asarray(emb.text, jnp.float32),
        emb.temperature, emb.bias)
    total += sign * gain * pair_losses
  return total


def _softmax_logits(learner, reference, scoring, gain):
  return [(sign * gain, losses.pair_logits(
      jnp.asarray(emb.image, jnp.float32), jnp.asarray(emb.text, jnp.float32),
      emb.temperature))
          for _, emb, sign in core.scoring_terms(scoring, learner, reference)]


def _softmax_conditional(weighted_logits, selected):
  """Each candidate's weighted CLIP loss within `selected u {itself}`."""
  total = 0.0
  for weight, logits in weighted_logits:
    n = logits.shape[0]
    member = selected[None, :] | jnp.eye(n, dtype=bool)  # [candidate, k].
    rows = jnp.where(member, logits, -jnp.inf)
    cols = jnp.where(member, logits.T, -jnp.inf)
    own = jnp.diagonal(logits)
    total += weight * (-own + 0.5 * (jax.nn.logsumexp(rows, axis=1) +
                                     jax.nn.logsumexp(cols, axis=1)))
  return total


@functools.partial(jax.jit, static_argnames=(
    "sub_batch_size", "n_chunks", "scoring", "loss"))
def joint_select(key, learner, reference, *, sub_batch_size,
                 n_chunks=core.DEFAULT_N_CHUNKS, scoring="learnability",
                 gain=core.DEFAULT_GAIN, loss="sigmoid"):
  """Same contract as `core.joint_select`, via the materialised matrix."""
  chunk_size = sub_batch_size // n_chunks
  if loss == "sigmoid":
    scores = score_matrix(learner, reference, scoring=scoring, gain=gain)
    size = scores.shape[0]
    diagonal = jnp.diagonal(scores)
  else:
    weighted_logits = _softmax_logits(learner, reference, scoring, gain)
    size = weighted_logits[0][1].shape[0]
  selected = jnp.zeros((size,), bool)
  conditional = jnp.zeros((size,), jnp.float32)  # sum_{k in S} s_ik + s_ki.
  chunks = []
  for step in range(n_chunks):  # Unrolled: n_chunks is small and static.
    if loss == "sigmoid":
      logits = diagonal + conditional
    else:
      logits = _softmax_conditional(weighted_logits, selected)
    chosen, selected = core.gumbel_top(key, step, logits, selected, chunk_size)
    if loss == "sigmoid":
      conditional += (jnp.sum(jnp.take(scores, chosen, axis=1), axis=1) +
                      jnp.sum(jnp.take(scores, chosen, axis=0), axis=0))
    chunks.append(chosen)
  return jnp.concatenate(chunks).astype(jnp.int32)
