"""The optimiser of docs/design.md §6: AdamW (β2 = 0.95), linear warmup then
cosine, weight decay on matrices only, global-norm gradient clipping."""

import jax
import optax


def learning_rate_schedule(config_optim, total_steps):
  warmup = min(config_optim.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config_optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def _decay_mask(params):
  # Kernels and embeddings decay; biases, norms, temperature and bias don't.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config_optim, total_steps):
  """Returns `(optax transformation, schedule)`."""
  schedule = learning_rate_schedule(config_optim, total_steps)
  transform = optax.chain(
      optax.clip_by_global_norm(config_optim.grad_clip),
      optax.adamw(schedule, b1=config_optim.b1, b2=config_optim.b2,
                  weight_decay=config_optim.weight_decay, mask=_decay_mask))
  return transform, schedule
