"""Dropout reaches the model in the update step only: the training loss and
gradients change with dropout > 0, scoring and evaluation do not, and the
masks are a function of the step key (seed, step)."""

import jax
import numpy as np

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import optim
from jest_jax import sharding
from jest_jax import train

VOCAB, TOKENS, B = 61, 16, 8


def functions_with(dropout):
  config = config_lib.load_config("jest", "method=iid")
  config.batch_size = B
  config.model.image.dropout = dropout
  config.model.text.dropout = dropout
  model = train.build_model(config, VOCAB)
  optimizer, _ = optim.make_optimizer(config.optim, 10)
  mesh = sharding.make_mesh(1)
  state = train.init_state(model, optimizer, config, mesh, (32, 32, 3),
                           TOKENS)
  return train.StepFunctions(model, optimizer, config, mesh), state


def batch(n=B, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          "tokens": rng.integers(3, VOCAB, (n, TOKENS), dtype=np.int32),
          "corrupt": np.zeros(n, bool)}


def test_dropout_changes_the_training_loss_and_gradients_only_when_set():
  with_dropout, state = functions_with(0.3)
  without, _ = functions_with(0.0)  # Same params: they ignore dropout.
  sub_batch, key = batch(), jax.random.key(0)
  rng = jax.random.key(1)
  grad = jax.jit(jax.value_and_grad(
      lambda f, p, r: f.loss(p, sub_batch, key, r)[0], argnums=1),
      static_argnums=0)
  loss_plain, grads_plain = grad(without, state.params, rng)
  loss_deterministic, _ = grad(with_dropout, state.params, None)
  loss_dropout, grads_dropout = grad(with_dropout, state.params, rng)
  np.testing.assert_allclose(loss_deterministic, loss_plain, rtol=1e-6)
  assert abs(float(loss_dropout) - float(loss_plain)) > 1e-4
  kernel = lambda g: g["img"]["Transformer"]["encoderblock_0"]["MlpBlock_0"][
      "Dense_0"]["kernel"]
  assert not np.allclose(kernel(grads_dropout), kernel(grads_plain),
                         atol=1e-7)
  # Another step key, other masks; the same key, the same masks.
  loss_again, _ = grad(with_dropout, state.params, rng)
  loss_other, _ = grad(with_dropout, state.params, jax.random.key(2))
  assert float(loss_again) == float(loss_dropout)
  assert float(loss_other) != float(loss_dropout)


def test_update_step_trains_with_dropout_and_scoring_and_eval_do_not():
  with_dropout, state = functions_with(0.3)
  without, _ = functions_with(0.0)
  sub_batch, key = batch(), jax.random.key(4)
  _, metrics = jax.jit(with_dropout.update)(state, sub_batch, key)
  _, metrics_plain = jax.jit(without.update)(state, sub_batch, key)
  assert float(metrics["train/loss"]) != float(metrics_plain["train/loss"])

  scored = jax.jit(with_dropout.score)(state.params, sub_batch)
  scored_plain = jax.jit(without.score)(state.params, sub_batch)
  np.testing.assert_array_equal(scored.image, scored_plain.image)
  np.testing.assert_array_equal(scored.text, scored_plain.text)
  encode = lambda f: evaluate.Encoder(f.model, f.mesh, B).images(
      state.params, sub_batch["image"])
  np.testing.assert_array_equal(encode(with_dropout), encode(without))


def test_a_trainer_run_with_dropout_trains_and_evaluates(tmp_path):
  config = config_lib.apply_overrides(config_lib.load_config("jest", "method=iid"), [
      "batch_size=16", "data.n_train=128", "data.n_curated=64",
      "data.n_retrieval=32", "data.n_zeroshot=48", "eval.batch_size=32",
      "total_steps=2", "log_every=1", "eval_every=2", "checkpoint_every=2",
      "optim.warmup_steps=1"])
  config.model.image.dropout = config.model.text.dropout = 0.2
  summary, _ = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 2
  assert all(np.isfinite(v) for k, v in summary.items()
             if k.startswith("eval/"))
