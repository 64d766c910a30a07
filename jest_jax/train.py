"""One trainer for reference and learner runs.

The data flow of a step (`make_train_step`):

  super_batch --score--> learner embeddings --select--> sub_batch --update-->
                 ^ reference embeddings (cache)

IID and reference runs skip score and select (super-batch == sub-batch).
`train_and_evaluate` is the whole run, in labelled sections: mesh, data,
model, optimiser, checkpoint/resume, step, loop (log, eval, checkpoint).
Every random choice is a function of `(seed, step)`.
"""

import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax import losses
from jest_jax import metrics as metrics_lib
from jest_jax import optim
from jest_jax import reference_cache
from jest_jax import selection
from jest_jax import sharding
from jest_jax.models import two_tower


class TrainingError(RuntimeError):
  """The run cannot go on; the message names the cause and the fix."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


# ---------------------------------------------------------------- model --


def build_model(config, vocab_size):
  text = dict(config.model.text)
  text["vocab_size"] = vocab_size
  return two_tower.Model(
      image=dict(config.model.image), text=text, out_dim=config.model.out_dim,
      temperature_init=config.model.temperature_init,
      bias_init=config.model.bias_init)


def init_state(model, optimizer, config, mesh, image_shape, max_tokens):
  """Replicated initial TrainState; params are a function of `config.seed`."""
  def init(key):
    images = jnp.zeros((2, *image_shape), jnp.float32)
    tokens = jnp.zeros((2, max_tokens), jnp.int32)
    params = model.init(key, images, tokens)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(key)


# ----------------------------------------------------------------- step --


def make_train_step(model, optimizer, config, mesh):
  """The jitted step `(state, super_batch, reference, key) -> (state, metrics)`.

  super_batch: dict of `image` uint8 `[B, H, W, 3]`, `tokens` int32 `[B, L]`,
    `corrupt` bool `[B]`, sharded over `data`.
  reference: dict of `image`, `text` `[B, d]`, `temperature`, `bias` (or
    None when the selection needs no reference).
  """
  sel = config.selection
  sub_batch_size = config.batch_size
  selecting = sel.kind != "uniform"

  def embed(params, images, tokens):
    zimg, ztxt, out = model.apply(
        {"params": params}, evaluate.preprocess_images(images), tokens)
    return zimg, ztxt, out

  def loss_fn(params, sub_batch):
    zimg, ztxt, out = embed(params, sub_batch["image"], sub_batch["tokens"])
    loss = losses.contrastive_loss(config.loss, zimg, ztxt, out["t"], out["b"])
    return loss, out

  def step_fn(state, super_batch, reference, key):
    metrics = {}
    if selecting:
      # score: the learner's view of the whole super-batch (no gradient).
      zimg, ztxt, out = embed(jax.lax.stop_gradient(state.params),
                              super_batch["image"], super_batch["tokens"])
      learner = selection.Embeddings(image=zimg, text=ztxt,
                                     temperature=out["t"], bias=out["b"])
      ref = None
      if reference is not None:
        ref = selection.Embeddings(
            image=reference["image"], text=reference["text"],
            temperature=reference["temperature"], bias=reference["bias"])
      # select: the jointly most learnable sub-batch.
      indices = selection.select(
          key, learner, ref, sub_batch_size=sub_batch_size, method=sel.kind,
          scoring=sel.scoring, gain=sel.gain, n_chunks=sel.n_chunks,
          loss=sel.loss)
      sub_batch = jax.tree.map(lambda x: jnp.take(x, indices, axis=0),
                               super_batch)
      # A uniform batch for comparison: the super-batch is a random draw, so
      # its first b examples are one.
      uniform = jnp.arange(sub_batch_size)
      kwargs = dict(scoring=sel.scoring, gain=sel.gain, loss=sel.loss)
      metrics["select/score"] = selection.batch_score(
          learner, ref, indices, **kwargs) / sub_batch_size
      metrics["select/score_uniform"] = selection.batch_score(
          learner, ref, uniform, **kwargs) / sub_batch_size
      metrics["select/pool_corrupt_fraction"] = jnp.mean(
          super_batch["corrupt"].astype(jnp.float32))
    else:
      sub_batch = super_batch
    metrics["select/corrupt_fraction"] = jnp.mean(
        sub_batch["corrupt"].astype(jnp.float32))

    # update: one optimiser step on the sub-batch.
    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, sub_batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update({
        "train/loss": loss, "train/temperature": out["t"],
        "train/bias": out["b"], "train/grad_norm": optax.tree.norm(grads)})
    new_state = TrainState(step=state.step + 1, params=params,
                           opt_state=opt_state)
    return new_state, metrics

  replicated = sharding.replicated(mesh)
  data = sharding.data_sharding(mesh)
  reference_shardings = None
  if config_lib.needs_reference(config):
    reference_shardings = dict(image=data, text=data, temperature=replicated,
                               bias=replicated)
  return jax.jit(
      step_fn,
      in_shardings=(replicated, data, reference_shardings, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,))


# -------------------------------------------------------------- the run --


def _checkpoint_manager(workdir, config):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=options, item_names=("state",))


def restore_params(workdir, step=None):
  """Params of a finished run's checkpoint (latest unless `step`), as NumPy,
  with the step they come from: `(params, step)`."""
  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      item_names=("state",))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise TrainingError(f"no checkpoint in {workdir}/checkpoints; train the "
                        "reference first (`python -m jest_jax.main --config "
                        "configs/reference.py --workdir ...`)")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  return restored["state"]["params"], step


def _save_config(workdir, config):
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_reference(config, split):
  """The reference cache for `split`, checked against data and checkpoint."""
  if not config_lib.needs_reference(config):
    return None
  checkpoint_fingerprint = None
  if config.reference.workdir:
    params, _ = restore_params(config.reference.workdir)
    checkpoint_fingerprint = reference_cache.params_fingerprint(params)
  try:
    return reference_cache.load(
        config.reference.cache_dir, dataset_fingerprint=split.fingerprint,
        count=len(split), checkpoint_fingerprint=checkpoint_fingerprint)
  except reference_cache.CacheError as e:
    raise TrainingError(str(e)) from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after=None):
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  `stop_after`: end this process after that step, with a checkpoint, as a
  preemption would (the schedule still runs to `config.total_steps`).

  Returns a summary dict: `step`, `wall_seconds` (of this process), the
  final `eval/*` metrics, and for all runs the mean `select/corrupt_fraction`
  over logged steps (plus `select/pool_corrupt_fraction` for selection runs).
  """
  t_start = time.perf_counter()
  lead = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # mesh
  mesh = sharding.make_mesh(config.mesh.num_devices)
  config_lib.validate(config, num_devices=mesh.size)
  if lead:
    _save_config(workdir, config)

  # data
  split = input_pipeline.load_split(config.data, config.data.split)
  super_batch_size = config_lib.super_batch_size(config)
  reference = load_reference(config, split)
  tokenizer = input_pipeline.tokenizer()

  # model and optimiser
  model = build_model(config, tokenizer.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
  image_shape = split.arrays["image"].shape[1:]
  state = init_state(model, optimizer, config, mesh, image_shape,
                     config.data.max_tokens)

  # checkpoint / resume
  manager = _checkpoint_manager(workdir, config)
  start_step = manager.latest_step() or 0
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("resumed %s from step %d", workdir, start_step)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=lead)

  # step and evaluation
  train_step = make_train_step(model, optimizer, config, mesh)
  encoder = evaluate.Encoder(model, mesh, config.eval.batch_size)
  base_key = jax.random.key(config.seed)
  progress = metrics_lib.Progress(config.total_steps, start_step,
                                  super_batch_size, name=config.method)

  def check_finite(step, loss):
    if not np.isfinite(loss):
      raise TrainingError(
          f"non-finite training loss ({loss}) at step {step}; lower "
          f"--config.optim.lr (now {config.optim.lr}) or check the data; "
          f"checkpoints up to step {manager.latest_step() or 0} are kept")

  # loop
  final_eval, logged = {}, []
  step = start_step
  last_step = config.total_steps
  if stop_after is not None:
    last_step = min(last_step, stop_after)
  for step in range(start_step + 1, last_step + 1):
    indices = input_pipeline.step_indices(config.seed, step - 1,
                                          super_batch_size, len(split))
    super_batch = split.take(indices, keys=("image", "tokens", "corrupt"))
    ref_batch = None
    if reference is not None:
      ref_image, ref_text = reference.take(indices)
      ref_batch = dict(image=ref_image, text=ref_text,
                       temperature=np.float32(reference.temperature),
                       bias=np.float32(reference.bias))
    key = jax.random.fold_in(base_key, step)
    state, step_metrics = train_step(state, super_batch, ref_batch, key)
    if step == start_step + 1:  # Rates exclude compilation.
      jax.block_until_ready(state)
      progress.restart(step)

    row = {}
    if step % config.log_every == 0 or step == config.total_steps:
      row = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      check_finite(step, row["train/loss"])
      row["train/lr"] = float(schedule(step - 1))
      row["examples_seen"] = step * config.batch_size
      row["examples_scored"] = step * super_batch_size
      row["train/examples_per_s"] = progress.log(step, row["train/loss"])
      logged.append(row)
    if step % config.eval_every == 0 or step == config.total_steps:
      final_eval = evaluate.evaluate(encoder, state.params, config.data)
      row.update(final_eval)
      row.setdefault("examples_seen", step * config.batch_size)
      logging.info("%s step %d eval %s", config.method, step,
                   {k: round(v, 4) for k, v in final_eval.items()})
    if row:
      writer.write(step, row)
    if step % config.checkpoint_every == 0 or step == last_step:
      check_finite(step, float(step_metrics["train/loss"]))
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  writer.close()

  if not final_eval:  # Already finished before this process started.
    final_eval = evaluate.evaluate(encoder, state.params, config.data)
  previous = [r for r in metrics_lib.read_metrics(workdir)] if lead else logged
  summary = dict(step=int(step), wall_seconds=time.perf_counter() - t_start)
  summary.update(final_eval)
  for key in ("select/corrupt_fraction", "select/pool_corrupt_fraction"):
    values = [r[key] for r in previous if key in r]
    if values:
      summary[key] = float(np.mean(values))
  return summary, state


def model_description(config):
  return json.loads(config.model.to_json_best_effort())
