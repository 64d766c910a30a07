"""One trainer for reference and learner runs.

The data flow of a step (`StepFunctions.step`):

  super_batch --score--> learner embeddings --select--> sub_batch --update-->
                 ^ reference embeddings (cache)

IID and reference runs skip score and select (super-batch == sub-batch).
`train_and_evaluate` is the whole run, in labelled sections: mesh, data,
model, optimiser, checkpoint/resume, step, loop (log, eval, checkpoint).
Every random choice is a function of `(seed, step)`.

Processes (multi-host): every process runs this same code on one global
mesh. Each loads only its block of every super-batch and of its reference
rows (`global_batches` assembles the global arrays); score, select, update
and evaluation are global programs; checkpoints are saved and restored by
all processes together; process 0 alone writes metrics, config and FLOPs.
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
from etils import epath

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax import losses
from jest_jax import metrics as metrics_lib
from jest_jax import optim
from jest_jax import reference_cache
from jest_jax import run_guard
from jest_jax import selection
from jest_jax import sharding
from jest_jax.models import two_tower


TrainingError = run_guard.TrainingError  # The cause and the fix, one line.


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


def split_for_resolutions(sub_batch_size, large_fraction, mode, key):
  """Which rows of the sub-batch are encoded at the small / large patch.

  Returns `(small_rows, large_rows)`, int32 index vectors of static lengths
  `b - n_large` and `n_large`, `n_large = round(b * large_fraction)`.
  `mode="random"` draws the split from `key` (SPEC §1: random halves);
  `"interleave"` spreads the large rows evenly (the paper's listing).
  """
  n_large = int(round(sub_batch_size * large_fraction))
  if mode == "random":
    order = jax.random.permutation(key, sub_batch_size)
  else:
    # Row i is large when floor((i + 1) * f) > floor(i * f): evenly spread.
    rows = np.arange(sub_batch_size)
    is_large = (np.floor((rows + 1) * large_fraction)
                > np.floor(rows * large_fraction))
    order = jnp.asarray(np.concatenate([rows[~is_large], rows[is_large]]))
  return order[:sub_batch_size - n_large], order[sub_batch_size - n_large:]


class StepFunctions:
  """The phases of a train step, each a pure function, and their composition.

    score(params, super_batch) -> learner Embeddings       (no gradient)
    select(key, learner, reference) -> int32[b] indices
    update(state, sub_batch, key) -> (state, metrics)
    step(state, super_batch, reference, key) -> (state, metrics)

  super_batch: dict of `image` uint8 `[B, H, W, 3]`, `tokens` int32 `[B, L]`,
    `corrupt` bool `[B]`, sharded over `data`.
  reference: dict of `image`, `text` `[B, d]`, `temperature`, `bias` (None
    when the selection needs no reference).
  """

  def __init__(self, model, optimizer, config, mesh):
    self.model, self.optimizer, self.config, self.mesh = (
        model, optimizer, config, mesh)
    self.sub_batch_size = config.batch_size
    self.selecting = config.selection.kind != "uniform"
    patch = config.patch
    self.small_patch = patch.small or None  # None: the variant's own patch.
    self.large_patch = patch.large or None
    self.score_patch = (self.large_patch if patch.score == "large"
                        else self.small_patch)

  def embed(self, params, images, tokens, patch_size):
    return self.model.apply({"params": params},
                            evaluate.preprocess_images(images), tokens,
                            patch_size=patch_size)

  def score(self, params, super_batch):
    zimg, ztxt, out = self.embed(jax.lax.stop_gradient(params),
                                 super_batch["image"], super_batch["tokens"],
                                 self.score_patch)
    return selection.Embeddings(image=zimg, text=ztxt, temperature=out["t"],
                                bias=out["b"])

  def select(self, key, learner, reference):
    sel = self.config.selection
    return selection.sharded_select(
        key, learner, reference, mesh=self.mesh, axis_name=sharding.DATA_AXIS,
        scope=sel.scope, sub_batch_size=self.sub_batch_size, method=sel.kind,
        scoring=sel.scoring, gain=sel.gain, n_chunks=sel.n_chunks,
        loss=sel.loss, refine_sweeps=sel.refine_sweeps)

  def sub_batch_embeddings(self, params, sub_batch, key):
    """Embeds the trained sub-batch, part at the small patch and part at the
    large one (Flexi-JEST), rows re-ordered consistently in both towers."""
    patch = self.config.patch
    images, tokens = sub_batch["image"], sub_batch["tokens"]
    if not patch.large_fraction:
      return self.embed(params, images, tokens, self.small_patch)
    small, large = split_for_resolutions(
        self.sub_batch_size, patch.large_fraction, patch.split, key)
    order = jnp.concatenate([small, large])
    zimg_small, ztxt, out = self.embed(params, images[small], tokens[order],
                                       self.small_patch)
    zimg_large, _, _ = self.embed(params, images[large], None,
                                  self.large_patch)
    return jnp.concatenate([zimg_small, zimg_large]), ztxt, out

  def loss(self, params, sub_batch, key):
    zimg, ztxt, out = self.sub_batch_embeddings(params, sub_batch, key)
    loss = losses.contrastive_loss(self.config.loss, zimg, ztxt, out["t"],
                                   out["b"])
    return loss, out

  def update(self, state, sub_batch, key):
    (loss, out), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, sub_batch, key)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/temperature": out["t"],
               "train/bias": out["b"], "train/grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  def step(self, state, super_batch, reference, key):
    select_key, update_key = jax.random.split(key)
    metrics = {}
    sub_batch = super_batch
    learner = ref = None
    if self.selecting:
      learner = self.score(state.params, super_batch)
      ref = None if reference is None else selection.Embeddings(**reference)
      indices = self.select(select_key, learner, ref)
      sub_batch = selection.gather_selected(
          super_batch, indices, mesh=self.mesh, axis_name=sharding.DATA_AXIS,
          scope=self.config.selection.scope)
      metrics.update(self.selection_metrics(learner, ref, indices,
                                            super_batch))
    metrics["select/corrupt_fraction"] = jnp.mean(
        sub_batch["corrupt"].astype(jnp.float32))
    state, update_metrics = self.update(state, sub_batch, update_key)
    metrics.update(update_metrics)
    # [faults] One flag for the host to check before saving (docs §9).
    metrics["train/finite"] = run_guard.step_finite(
        metrics["train/loss"], metrics["train/grad_norm"], learner, ref)
    return state, metrics

  def selection_metrics(self, learner, reference, indices, super_batch):
    sel = self.config.selection
    kwargs = dict(scoring=sel.scoring, gain=sel.gain, loss=sel.loss)
    # The super-batch is a uniform draw, so its first b rows are a uniform
    # batch to compare the selected one with.
    uniform = jnp.arange(self.sub_batch_size)
    b = self.sub_batch_size
    return {
        "select/score": selection.batch_score(learner, reference, indices,
                                              **kwargs) / b,
        "select/score_uniform": selection.batch_score(
            learner, reference, uniform, **kwargs) / b,
        "select/pool_corrupt_fraction": jnp.mean(
            super_batch["corrupt"].astype(jnp.float32)),
    }

  def shardings(self):
    replicated = sharding.replicated(self.mesh)
    data = sharding.data_sharding(self.mesh)
    reference = None
    if config_lib.needs_reference(self.config):
      reference = dict(image=data, text=data, temperature=replicated,
                       bias=replicated)
    return replicated, data, reference

  def jit_step(self):
    replicated, data, reference = self.shardings()
    return jax.jit(self.step,
                   in_shardings=(replicated, data, reference, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def _lowered_cost(lowered):
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0]
  return float(cost["flops"])


def _lowered_flops(fn, *args):
  """FLOPs of `fn(*args)` by XLA's cost analysis (args may be abstract)."""
  return _lowered_cost(jax.jit(fn).lower(*args))


def paper_flops_ratio(config, approx_factor):
  """SPEC §1's cost model of a step relative to an IID step (same b).

  IID 3F per example; JEST F(2 + B/b) (the scoring forward reused);
  Flexi-JEST 3F(1 - l + l A) + A F B/b with l the large-patch fraction.
  """
  patch = config.patch
  large = patch.large_fraction
  train_cost = 3.0 * (1.0 - large + large * approx_factor)
  if config.selection.kind == "uniform":
    return train_cost / 3.0
  ratio = config_lib.super_batch_size(config) / config.batch_size
  if patch.score == "small" and not large:
    return (2.0 + ratio) / 3.0
  score_cost = approx_factor if patch.score == "large" else 1.0
  return (train_cost + score_cost * ratio) / 3.0


def measure_flops(functions, state, super_batch, reference, key):
  """Per-phase FLOPs of one step from XLA's cost analysis of each phase,
  plus what an IID step at the small patch would cost and the measured
  approximation factor A (large-patch over small-patch forward FLOPs)."""
  b = functions.sub_batch_size
  sub_batch = jax.tree.map(lambda x: x[:b], super_batch)
  out = {}
  out["flops/update"] = _lowered_flops(functions.update, state, sub_batch,
                                       key)
  out["flops/iid_step"] = out["flops/update"]
  if functions.config.patch.large_fraction:
    iid_config = ml_collections.ConfigDict(functions.config.to_dict())
    iid_config.patch.large_fraction = 0.0
    iid = StepFunctions(functions.model, functions.optimizer, iid_config,
                        functions.mesh)
    out["flops/iid_step"] = _lowered_flops(iid.update, state, sub_batch, key)
  approx_factor = 1.0
  if functions.large_patch:
    forward = lambda patch: _lowered_flops(
        lambda p, x: functions.embed(p, x["image"], x["tokens"], patch),
        state.params, sub_batch)
    approx_factor = (forward(functions.large_patch)
                     / forward(functions.small_patch))
  out["flops/approx_factor"] = approx_factor
  if functions.selecting:
    out["flops/score"] = _lowered_flops(functions.score, state.params,
                                        super_batch)
    learner = jax.eval_shape(functions.score, state.params, super_batch)
    ref = None if reference is None else selection.Embeddings(**reference)
    out["flops/select"] = _lowered_flops(functions.select, key, learner, ref)
  out["flops/paper_ratio"] = paper_flops_ratio(functions.config,
                                               approx_factor)
  return out


def _compiled_flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost["flops"])


# -------------------------------------------------------------- the run --


def _use_serial_array_saving_on_cpu():
  """On CPU, save each replicated array from one replica.

  orbax's default splits a replicated array's write across its replicas,
  which pays off on accelerators across hosts but on CPU compiles one slice
  program per parameter shape (~90 for the demo model, seconds per save).
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)


def _checkpoint_dir(workdir):
  """`workdir/checkpoints`, absolute; cloud paths (`gs://...`) as given.
  With several processes it must be one directory they all see."""
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, "checkpoints")


def _checkpoint_manager(workdir, config):
  _use_serial_array_saving_on_cpu()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(_checkpoint_dir(workdir), options=options,
                               item_names=("state",))


def restore_params(workdir, step=None):
  """Params of a finished run's checkpoint (latest unless `step`), as NumPy,
  with the step they come from: `(params, step)`. Works whatever devices
  and processes saved it or read it (every process gets all of it)."""
  if not epath.Path(_checkpoint_dir(workdir)).exists():  # [faults] Read only.
    raise TrainingError(f"no checkpoints folder in {workdir}; pass the "
                        "workdir of a trained reference run")
  manager = ocp.CheckpointManager(
      _checkpoint_dir(workdir), item_names=("state",),
      options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise TrainingError(f"no checkpoint in {workdir}/checkpoints; train the "
                        "reference first (`python -m jest_jax.main --config "
                        "configs/reference.py --workdir ...`)")
  # NumPy targets: restore onto the host, not onto the saving topology.
  host_target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype),
                             manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(host_target)))
  return restored["state"]["params"], step


def _save_config(workdir, config):
  (epath.Path(workdir) / "config.json").write_text(
      config.to_json_best_effort(indent=2, sort_keys=True))


def write_params_as_run(workdir, config, params, step=0):
  """Makes `params` a run directory (config.json + a checkpoint holding
  `{"params": ...}` at `step`) that `restore_params` and
  `python -m jest_jax.cache_reference` read: e.g. a big_vision checkpoint
  loaded with `models.big_vision_io.load_npz`, to serve as the reference."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  _save_config(workdir, config)
  _use_serial_array_saving_on_cpu()
  manager = ocp.CheckpointManager(
      _checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(create=True,
                                           enable_async_checkpointing=False),
      item_names=("state",))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": params})))
  manager.wait_until_finished()


def global_batches(super_batch, ref_batch, mesh):
  """This process's block of super-batch rows and of their reference rows
  -> global arrays over `mesh` (every process calls it, same step)."""
  super_batch = sharding.put_process_local_batch(super_batch, mesh)
  if ref_batch is not None:
    rows = dict(image=ref_batch["image"], text=ref_batch["text"])
    ref_batch = dict(ref_batch, **sharding.put_process_local_batch(rows,
                                                                   mesh))
  return super_batch, ref_batch


def load_reference(config, train_input):
  """The reference cache for the training data, checked against the data's
  fingerprint and (if `config.reference.workdir` is set) the checkpoint."""
  if not config_lib.needs_reference(config):
    return None
  checkpoint_fingerprint = None
  if config.reference.workdir:
    params, _ = restore_params(config.reference.workdir)
    checkpoint_fingerprint = reference_cache.params_fingerprint(params)
  try:
    return reference_cache.load(
        config.reference.cache_dir,
        dataset_fingerprint=train_input.fingerprint, count=len(train_input),
        checkpoint_fingerprint=checkpoint_fingerprint)
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
  # mesh; [faults] validation before anything is written, then the guard
  # (workdir lock, signals, OS faults) for the whole run.
  mesh = sharding.make_mesh(config.mesh.num_devices)
  config_lib.validate(config, num_devices=mesh.size)
  with run_guard.RunGuard(workdir) as guard:
    return _train_and_evaluate(config, workdir, mesh, guard, t_start,
                               stop_after)


def _train_and_evaluate(config, workdir, mesh, guard, t_start, stop_after):
  lead = jax.process_index() == 0
  if lead:
    _save_config(workdir, config)

  # data
  super_batch_size = config_lib.super_batch_size(config)
  train_input = input_pipeline.TrainInput(config.data, config.data.split,
                                          super_batch_size, config.seed)
  reference = load_reference(config, train_input)
  tokenizer = input_pipeline.tokenizer(config.data)

  # model and optimiser
  model = build_model(config, tokenizer.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
  state = init_state(model, optimizer, config, mesh, train_input.image_shape,
                     config.data.max_tokens)

  # checkpoint / resume
  manager = _checkpoint_manager(workdir, config)
  start_step = run_guard.rollback(manager, workdir, config.resume_step)
  if start_step:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    logging.info("resumed %s from step %d", workdir, start_step)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=lead)

  # step and evaluation
  functions = StepFunctions(model, optimizer, config, mesh)
  train_step = None  # Compiled at the first step, from its real inputs.
  flops = {}
  encoders = {"": evaluate.Encoder(model, mesh, config.eval.batch_size,
                                   patch_size=functions.small_patch)}
  if config.patch.eval_large:
    encoders["large/"] = evaluate.Encoder(model, mesh, config.eval.batch_size,
                                          patch_size=functions.large_patch)

  def run_evals(params):
    results = {}
    for prefix, encoder in encoders.items():
      for key, value in evaluate.evaluate(encoder, params, config.data).items():
        results[key.replace("eval/", f"eval/{prefix}")] = value
    return results
  base_key = jax.random.key(config.seed)
  progress = metrics_lib.Progress(config.total_steps, start_step,
                                  super_batch_size, name=config.method)

  def check_finite(step):  # [faults] Every step since the last check.
    guard.check_finite(step, manager.all_steps(), config.optim.lr)

  # loop
  final_eval, logged = {}, []
  step = start_step
  last_step = config.total_steps
  if stop_after is not None:
    last_step = min(last_step, stop_after)
  for step in range(start_step + 1, last_step + 1):
    super_batch = train_input.batch(step - 1)
    record_indices = super_batch.pop("index")
    ref_batch = None
    if reference is not None:
      ref_image, ref_text = reference.take(record_indices)
      ref_batch = dict(image=ref_image, text=ref_text,
                       temperature=np.float32(reference.temperature),
                       bias=np.float32(reference.bias))
    super_batch, ref_batch = global_batches(super_batch, ref_batch, mesh)
    key = jax.random.fold_in(base_key, step)
    if train_step is None:
      lowered = functions.jit_step().lower(state, super_batch, ref_batch, key)
      train_step = lowered.compile()
      flops = measure_flops(functions, state, super_batch, ref_batch, key)
      flops["flops/step"] = _compiled_flops(train_step)
      # Like for like: both from the unoptimised programs' cost analysis.
      flops["flops/ratio_to_iid"] = (
          _lowered_cost(lowered) / flops["flops/iid_step"])
      if reference is not None and "build_flops" in reference.manifest:
        flops["flops/reference_cache"] = reference.manifest["build_flops"]
      if lead:
        (epath.Path(workdir) / "flops.json").write_text(
            json.dumps(flops, indent=2, sort_keys=True))
    state, step_metrics = train_step(state, super_batch, ref_batch, key)
    guard.record(step, step_metrics.pop("train/finite"))  # [faults]
    if step == start_step + 1:  # Rates exclude compilation.
      jax.block_until_ready(state)
      progress.restart(step)

    row = {}
    if step % config.log_every == 0 or step == config.total_steps:
      row = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      check_finite(step)
      guard.share_stop()  # [faults] Several processes: a local Ctrl-C.
      row["train/lr"] = float(schedule(step - 1))
      row["examples_seen"] = step * config.batch_size
      row["examples_scored"] = step * super_batch_size
      row["data/bad_records"] = train_input.bad_records
      row["flops/step"] = flops["flops/step"]
      row["flops/total"] = step * flops["flops/step"]
      row["train/examples_per_s"], row["train/step_seconds"] = progress.log(
          step, row["train/loss"])
      logged.append(row)
    if step % config.eval_every == 0 or step == config.total_steps:
      t_eval = time.perf_counter()
      final_eval = run_evals(state.params)
      progress.exclude(time.perf_counter() - t_eval)
      row.update(final_eval)
      row.setdefault("examples_seen", step * config.batch_size)
      logging.info("%s step %d eval %s", config.method, step,
                   {k: round(v, 4) for k, v in final_eval.items()})
    if row:
      writer.write(step, row)
    stop = guard.should_stop(step)  # [faults] A signal: save, then stop.
    if step % config.checkpoint_every == 0 or step == last_step or stop:
      t_save = time.perf_counter()
      check_finite(step)
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state)))
      manager.wait_until_finished()
      guard.saved()
      progress.exclude(time.perf_counter() - t_save)
    if stop:
      writer.close()
      train_input.close()
      raise guard.preempted(step)
  manager.wait_until_finished()
  writer.close()
  train_input.close()

  if not final_eval:  # Already finished before this process started.
    final_eval = run_evals(state.params)
  previous = [r for r in metrics_lib.read_metrics(workdir)] if lead else logged
  summary = dict(step=int(step), wall_seconds=time.perf_counter() - t_start)
  summary.update(final_eval)
  summary.update(flops)
  for key in ("select/corrupt_fraction", "select/pool_corrupt_fraction"):
    values = [r[key] for r in previous if key in r]
    if values:
      summary[key] = float(np.mean(values))
  return summary, state


def model_description(config):
  return json.loads(config.model.to_json_best_effort())
