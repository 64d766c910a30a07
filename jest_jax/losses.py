"""Contrastive image–text losses, as batch scalars and as per-pair terms.

Embeddings are L2-normalised, `[n, d]`. `temperature` is the multiplier
`exp(t)` (not the log), `bias` is `b0`; both are scalars.

Sigmoid (SigLIP), docs/design.md §1:
  L_ij = -log_sigmoid(z_ij * (temperature * <x_i, y_j> + bias)),
  z_ij = +1 if i == j else -1; batch loss = sum_ij L_ij / n.

Softmax (CLIP): logits_ij = temperature * <x_i, y_j> (+ bias, which cancels);
  per-example loss l_i = -logits_ii + (lse_j logits_ij + lse_j logits_ji) / 2,
  batch loss = mean_i l_i (the mean of the image->text and text->image
  cross-entropies).
"""

import jax
import jax.numpy as jnp


def pair_logits(image_emb, text_emb, temperature, bias=0.0):
  """`[n, m]` logits `temperature * <x_i, y_j> + bias`."""
  return temperature * jnp.asarray(image_emb) @ jnp.asarray(text_emb).T + bias


def sigmoid_pair_losses(image_emb, text_emb, temperature, bias):
  """Per-pair sigmoid losses `L_ij`, `[n, n]` (positives on the diagonal)."""
  logits = pair_logits(image_emb, text_emb, temperature, bias)
  n, m = logits.shape
  labels = 2.0 * jnp.eye(n, m, dtype=logits.dtype) - 1.0
  return -jax.nn.log_sigmoid(labels * logits)


def sigmoid_loss(image_emb, text_emb, temperature, bias):
  """SigLIP batch loss: `sum_ij L_ij / n`, a scalar."""
  pairs = sigmoid_pair_losses(image_emb, text_emb, temperature, bias)
  return jnp.sum(pairs) / pairs.shape[0]


def softmax_example_losses(image_emb, text_emb, temperature):
  """Per-example CLIP losses `l_i`, `[n]` (mean of both directions)."""
  logits = pair_logits(image_emb, text_emb, temperature)
  positives = jnp.diagonal(logits)
  image_to_text = jax.nn.logsumexp(logits, axis=1) - positives
  text_to_image = jax.nn.logsumexp(logits, axis=0) - positives
  return 0.5 * (image_to_text + text_to_image)


def softmax_loss(image_emb, text_emb, temperature):
  """CLIP batch loss: mean of the per-example losses, a scalar."""
  return jnp.mean(softmax_example_losses(image_emb, text_emb, temperature))


def contrastive_loss(kind, image_emb, text_emb, temperature, bias):
  """Batch loss by name: `kind` in {"sigmoid", "softmax"}."""
  if kind == "sigmoid":
    return sigmoid_loss(image_emb, text_emb, temperature, bias)
  if kind == "softmax":
    return softmax_loss(image_emb, text_emb, temperature)
  raise ValueError(f"unknown loss {kind!r}; use 'sigmoid' or 'softmax'")
