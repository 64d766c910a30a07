"""Losses against naive NumPy twins written loop by loop from docs/design.md §1."""

import math

import jax
import numpy as np
import pytest

from jest_jax import losses


def _normalised(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _naive_sigmoid_pairs(x, y, t, b):
  n = len(x)
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      logit = t * float(x[i] @ y[j]) + b
      out[i, j] = math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
  return out


def _naive_softmax_examples(x, y, t):
  logits = t * x @ y.T
  n = len(x)
  out = np.zeros(n)
  for i in range(n):
    row = math.log(sum(math.exp(v) for v in logits[i]))
    col = math.log(sum(math.exp(v) for v in logits[:, i]))
    out[i] = 0.5 * ((row - logits[i, i]) + (col - logits[i, i]))
  return out


@pytest.fixture
def pair():
  rng = np.random.default_rng(0)
  return _normalised(rng, 7, 5), _normalised(rng, 7, 5)


def test_sigmoid_pair_losses_match_naive_loop(pair):
  x, y = pair
  got = losses.sigmoid_pair_losses(x, y, 10.0, -10.0)
  np.testing.assert_allclose(got, _naive_sigmoid_pairs(x, y, 10.0, -10.0),
                             rtol=1e-5, atol=1e-6)


def test_sigmoid_loss_is_pair_sum_over_batch_size(pair):
  x, y = pair
  expected = _naive_sigmoid_pairs(x, y, 3.0, -2.0).sum() / len(x)
  np.testing.assert_allclose(losses.sigmoid_loss(x, y, 3.0, -2.0), expected,
                             rtol=1e-5)


def test_softmax_example_losses_match_naive_loop(pair):
  x, y = pair
  np.testing.assert_allclose(losses.softmax_example_losses(x, y, 4.0),
                             _naive_softmax_examples(x, y, 4.0), rtol=1e-5)


def test_softmax_loss_ignores_bias(pair):
  x, y = pair
  a = losses.contrastive_loss("softmax", x, y, 4.0, 0.0)
  b = losses.contrastive_loss("softmax", x, y, 4.0, -10.0)
  np.testing.assert_allclose(a, b)


def test_sigmoid_loss_is_stable_for_large_logits():
  x = np.eye(3, 4)
  value = losses.sigmoid_loss(x, -x, 1e4, 0.0)
  assert np.isfinite(value) and value > 1e3


def test_sigmoid_loss_gradient_matches_finite_difference(pair):
  x, y = pair
  grad = jax.grad(lambda t: losses.sigmoid_loss(x, y, t, -1.0))(2.0)
  eps = 1e-3
  fd = (losses.sigmoid_loss(x, y, 2.0 + eps, -1.0)
        - losses.sigmoid_loss(x, y, 2.0 - eps, -1.0)) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=1e-2)


def test_unknown_loss_name_is_a_clear_error(pair):
  with pytest.raises(ValueError, match="unknown loss 'hinge'"):
    losses.contrastive_loss("hinge", *pair, 1.0, 0.0)
