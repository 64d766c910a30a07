"""Step -> examples is a pure function of (seed, step), epoch by epoch."""

import numpy as np

from jest_jax import input_pipeline


def test_step_indices_are_deterministic():
  a = input_pipeline.step_indices(3, 7, 32, 100)
  b = input_pipeline.step_indices(3, 7, 32, 100)
  np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_orders():
  a = input_pipeline.step_indices(0, 0, 32, 1000)
  b = input_pipeline.step_indices(1, 0, 32, 1000)
  assert not np.array_equal(a, b)


def test_each_epoch_visits_every_example_once():
  n, batch = 100, 10
  epoch = np.concatenate([input_pipeline.step_indices(5, s, batch, n)
                          for s in range(n // batch)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(n))


def test_batches_straddling_epochs_continue_the_stream():
  n, batch = 10, 4  # Step 2 reads positions 8..11: two of epoch 0, two of 1.
  stream = np.concatenate([input_pipeline.step_indices(0, s, batch, n)
                           for s in range(5)])
  np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(stream[10:20]), np.arange(10))
  np.testing.assert_array_equal(input_pipeline.step_indices(0, 2, batch, n),
                                stream[8:12])
