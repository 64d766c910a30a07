"""One trainer for reference and learner runs.

The data flow of a step (`StepFunctions.step`):

  super_batch --score--> learner embeddings --select--> sub_batch --update-->
                 ^ reference embeddings (cache)

IID and reference runs skip score and select (super-batch == sub-batch).
`train_and_evaluate` is the whole run, in labelled sections: mesh, data,
model, optimiser, checkpoint/resume, step (compiled before the loop), loop
(batch -> step -> log / eval / checkpoint). FLOP accounting is in
`jest_jax/flops.py`, checkpoints in `jest_jax/checkpointing.py`. Every random
choice is a function of `(seed, step)` (docs/design.md §2).

Processes (multi-host): every process runs this same code on one global
mesh. Each loads only its block of every super-batch and of its reference
rows (`global_batches` assembles the global arrays); score, select, update
and evaluation are global programs; checkpoints are saved and restored by
all processes together; process 0 alone writes metrics, config and FLOPs.
"""

import json
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from jest_jax import checkpointing
from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import flops as flops_lib
from jest_jax import input_pipeline
from jest_jax import losses
from jest_jax import metrics as metrics_lib
from jest_jax import optim
from jest_jax import reference_cache
from jest_jax import run_guard
from jest_jax import selection
from jest_jax import sharding
from jest_jax.data import tokenizer as tokenizer_lib
from jest_jax.errors import TrainingError
from jest_jax.models import two_tower

# Run directories as other modules read and write them (jest_jax/checkpointing).
restore_params = checkpointing.restore_params
write_params_as_run = checkpointing.write_params_as_run


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


# ---------------------------------------------------------------- model --


def build_model(config, vocab_size):
  """The two-tower model of `config.model`; `dtype` (activations), `remat`
  and `scan` apply to both towers, parameters stay float32."""
  memory = dict(dtype=jnp.dtype(config.model.get("dtype", "float32")),
                remat=config.model.get("remat", False),
                scan=config.model.get("scan", False))
  text = {**memory, **dict(config.model.text)}
  text["vocab_size"] = vocab_size
  return two_tower.Model(
      image={**memory, **dict(config.model.image)}, text=text,
      out_dim=config.model.out_dim,
      temperature_init=config.model.temperature_init,
      bias_init=config.model.bias_init)


def _init_fn(model, optimizer, image_shape, max_tokens):
  def init(key):
    images = jnp.zeros((2, *image_shape), jnp.float32)
    tokens = jnp.zeros((2, max_tokens), jnp.int32)
    params = model.init(key, images, tokens)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))
  return init


def state_shardings(model, optimizer, config, mesh, image_shape, max_tokens):
  """The TrainState's shardings: params and optimiser state by
  `config.sharding_rules` (sharding.py), the step replicated."""
  abstract = jax.eval_shape(_init_fn(model, optimizer, image_shape,
                                     max_tokens), jax.random.key(0))
  rules = config.get("sharding_rules", ())
  return TrainState(
      step=sharding.replicated(mesh),
      params=sharding.tree_shardings(abstract.params, mesh, rules),
      opt_state=sharding.tree_shardings(abstract.opt_state, mesh, rules))


def init_state(model, optimizer, config, mesh, image_shape, max_tokens):
  """Initial TrainState sharded by `state_shardings`; params are a function
  of `config.seed` (not of the mesh)."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  out = state_shardings(model, optimizer, config, mesh, image_shape,
                        max_tokens)
  return jax.jit(_init_fn(model, optimizer, image_shape, max_tokens),
                 out_shardings=out)(key)


# ----------------------------------------------------------------- step --


def split_for_resolutions(sub_batch_size, large_fraction, mode, key):
  """Which rows of a (shard's) sub-batch are encoded at the small / large
  patch.

  Returns `(small_rows, large_rows)`, int32 index vectors of static lengths
  `b - n_large` and `n_large`, `n_large = round(b * large_fraction)`.
  `mode="random"` draws the split from `key` (docs/design.md §3: random
  halves); `"interleave"` spreads the large rows evenly (the paper's listing).
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


def shard_splits(sub_batch_size, large_fraction, mode, key, shards):
  """`split_for_resolutions` of each shard's own `b / shards` rows.

  Returns `(small_rows, large_rows)`, int32 `[shards, n_small]` and
  `[shards, n_large]` of row indices local to the shard. Shard s draws from
  `fold_in(key, s)`, so its split depends on (seed, step, shard) only; one
  shard keeps the whole-batch draw from `key` itself.
  """
  local = sub_batch_size // shards
  if shards == 1:
    small, large = split_for_resolutions(local, large_fraction, mode, key)
    return small[None], large[None]
  keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(shards))
  return jax.vmap(lambda k: split_for_resolutions(local, large_fraction, mode,
                                                  k))(keys)


class StepFunctions:
  """The phases of a train step, each a pure function, and their composition.

    score(params, super_batch) -> learner Embeddings       (no gradient)
    select(key, learner, reference) -> int32[b] indices
    update(state, sub_batch, key) -> (state, metrics)
    step(state, super_batch, reference, key) -> (state, metrics)

  super_batch: dict of `image` uint8 `[B, H, W, 3]`, `tokens` int32 `[B, L]`,
    `corrupt` bool `[B]`, sharded over `data`.
  reference: `selection.Embeddings` of the super-batch's rows in the
    reference cache (`image`, `text` `[B, d]` in the cache's stored dtype,
    upcast here; None when the selection needs no reference).
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
    self.batch_shards = sharding.batch_shards(mesh)

  def embed(self, params, images, tokens, patch_size, dropout_rng=None):
    """Embeddings of a batch; dropout (train mode) only with a `dropout_rng`:
    scoring and evaluation are deterministic."""
    train = dropout_rng is not None
    return self.model.apply({"params": params},
                            evaluate.preprocess_images(images), tokens,
                            patch_size=patch_size, train=train,
                            rngs={"dropout": dropout_rng} if train else None)

  def score(self, params, super_batch):
    zimg, ztxt, out = self.embed(jax.lax.stop_gradient(params),
                                 super_batch["image"], super_batch["tokens"],
                                 self.score_patch)
    # The selection kernel runs in float32 whatever the model's dtype.
    return selection.Embeddings(image=zimg.astype(jnp.float32),
                                text=ztxt.astype(jnp.float32),
                                temperature=out["t"], bias=out["b"])

  def select(self, key, learner, reference):
    sel = self.config.selection
    return selection.sharded_select(
        key, learner, reference, mesh=self.mesh, axis_name=sharding.DATA_AXIS,
        scope=sel.scope, sub_batch_size=self.sub_batch_size, method=sel.kind,
        scoring=sel.scoring, gain=sel.gain, n_chunks=sel.n_chunks,
        loss=sel.loss, refine_sweeps=sel.refine_sweeps)

  def sub_batch_embeddings(self, params, sub_batch, key, dropout_rng=None):
    """Embeds the trained sub-batch, part at the small patch and part at the
    large one (Flexi-JEST), rows re-ordered consistently in both towers.

    Each batch shard splits its own rows (`shard_splits`), so a device
    encodes only rows it holds: `[D, b/D]` views keep every gather local.
    Returns `(zimg, ztxt, out)`, embeddings `[b, d]` whose rows are, per
    shard, its small rows then its large rows (the loss does not depend on
    the order of the pairs).
    """
    patch = self.config.patch
    images, tokens = sub_batch["image"], sub_batch["tokens"]
    if not patch.large_fraction:
      return self.embed(params, images, tokens, self.small_patch, dropout_rng)
    shards = self.batch_shards
    small, large = shard_splits(self.sub_batch_size, patch.large_fraction,
                                patch.split, key, shards)
    order = jnp.concatenate([small, large], axis=1)
    images_small, images_large, tokens = _take_local_rows(
        self.mesh, (images, small), (images, large), (tokens, order))
    small_rng = large_rng = None
    if dropout_rng is not None:
      small_rng, large_rng = jax.random.split(dropout_rng)
    zimg_small, ztxt, out = self.embed(params, images_small, tokens,
                                       self.small_patch, small_rng)
    zimg_large, _, _ = self.embed(params, images_large, None,
                                  self.large_patch, large_rng)
    per_shard = lambda z: z.reshape(shards, -1, z.shape[-1])
    zimg = jnp.concatenate([per_shard(zimg_small), per_shard(zimg_large)],
                           axis=1)
    return zimg.reshape(ztxt.shape), ztxt, out

  def loss(self, params, sub_batch, key, dropout_rng=None):
    """Training loss; `key` draws the resolution split, `dropout_rng` (None:
    no dropout) the dropout masks."""
    zimg, ztxt, out = self.sub_batch_embeddings(params, sub_batch, key,
                                                dropout_rng)
    loss = losses.contrastive_loss(self.config.loss, zimg, ztxt, out["t"],
                                   out["b"])
    return loss, out

  def update(self, state, sub_batch, key):
    split_key, dropout_rng = jax.random.split(key)
    (loss, out), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, sub_batch, split_key, dropout_rng)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/temperature": out["t"],
               "train/bias": out["b"], "train/grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  @staticmethod
  def as_float32(embeddings):
    """Cached reference rows arrive in their stored dtype (e.g. bfloat16);
    the selection kernel works in float32."""
    if embeddings is None:
      return None
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), embeddings)

  def step(self, state, super_batch, reference, key):
    select_key, update_key = jax.random.split(key)
    metrics = {}
    sub_batch = super_batch
    learner = ref = None
    if self.selecting:
      # Reference-only scoring (CLIP-score filtering) needs no learner
      # forward pass: such a step costs about an IID step.
      if config_lib.needs_learner_scores(self.config):
        learner = self.score(state.params, super_batch)
      ref = self.as_float32(reference)
      indices = self.select(select_key, learner, ref)
      sub_batch = selection.gather_selected(
          super_batch, indices, mesh=self.mesh, axis_name=sharding.DATA_AXIS,
          scope=self.config.selection.scope)
      metrics.update(self.selection_metrics(learner, ref, indices,
                                            super_batch))
    metrics["train/corrupt_fraction"] = jnp.mean(
        sub_batch["corrupt"].astype(jnp.float32))
    state, update_metrics = self.update(state, sub_batch, update_key)
    metrics.update(update_metrics)
    # One flag for the host to check before saving (docs §9).
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
    """(state, batch, reference, replicated) shardings of `step`'s inputs."""
    replicated = sharding.replicated(self.mesh)
    data = sharding.data_sharding(self.mesh)
    reference = None
    if config_lib.needs_reference(self.config):
      reference = selection.Embeddings(image=data, text=data,
                                       temperature=replicated, bias=replicated)
    image_size = self.config.data.image_size
    state = state_shardings(self.model, self.optimizer, self.config,
                            self.mesh, (image_size, image_size, 3),
                            self.config.data.max_tokens)
    return state, data, reference, replicated

  def jit_step(self):
    state, data, reference, replicated = self.shardings()
    return jax.jit(self.step,
                   in_shardings=(state, data, reference, replicated),
                   out_shardings=(state, replicated), donate_argnums=(0,))


def _take_local_rows(mesh, *arrays_and_rows):
  """`x[rows[s]]` within each batch shard s, for pairs `(x [n, ...], rows
  [D, k])` (x sharded over the batch axes, D shards, rows local indices):
  returns arrays `[D * k, ...]` sharded the same way, with no cross-device
  traffic."""
  spec = sharding.batch_spec(mesh)

  def local(*pairs):
    return tuple(jnp.take(x, rows[0], axis=0) for x, rows in pairs)

  return jax.shard_map(local, mesh=mesh,
                       in_specs=tuple((spec, spec) for _ in arrays_and_rows),
                       out_specs=tuple(spec for _ in arrays_and_rows))(
                           *arrays_and_rows)


# -------------------------------------------------------------- the run --


def global_batches(super_batch, ref_batch, mesh):
  """This process's block of super-batch rows and of their reference rows
  -> global arrays over `mesh` (every process calls it, same step)."""
  super_batch = sharding.put_process_local_batch(super_batch, mesh)
  if ref_batch is not None:
    rows = dict(image=ref_batch.image, text=ref_batch.text)
    ref_batch = ref_batch._replace(**sharding.put_process_local_batch(rows,
                                                                      mesh))
  return super_batch, ref_batch


def load_reference(config):
  """The reference cache for the training data (opened, not read), checked
  against the data's fingerprint and (if `config.reference.workdir` is set)
  the checkpoint."""
  if not config_lib.needs_reference(config):
    return None
  checkpoint_fingerprint = None
  if config.reference.workdir:
    params, _ = restore_params(config.reference.workdir)
    checkpoint_fingerprint = reference_cache.params_fingerprint(params)
  try:
    tokenizer_lib.check_cache_tokenizer(config.reference.cache_dir,
                                        input_pipeline.tokenizer(config.data))
  except tokenizer_lib.TokenizerMismatch as e:
    raise TrainingError(str(e)) from None
  try:
    records = input_pipeline.open_records(config.data, config.data.split)
    return reference_cache.open_cache(
        config.reference.cache_dir,
        dataset_fingerprint=records.fingerprint, count=len(records),
        checkpoint_fingerprint=checkpoint_fingerprint)
  except reference_cache.CacheError as e:
    raise TrainingError(str(e)) from None


def device_batch(train_input, step, mesh):
  """Step `step`'s super-batch and its reference rows (joined by the input
  pipeline) as global arrays: `(super_batch, ref_batch)`; `ref_batch` is
  None without a reference."""
  super_batch = train_input.batch(step - 1)
  super_batch.pop("index")
  ref_batch = super_batch.pop("reference", None)
  return global_batches(super_batch, ref_batch, mesh)


def resume(checkpoints, state, workdir, resume_step=0):
  """`(state, step)` of the latest checkpoint, or `(state, 0)` if none;
  `resume_step=N` rolls back to checkpoint N (`run_guard.rollback`)."""
  start_step = run_guard.rollback(checkpoints, workdir, resume_step)
  if start_step:
    state = checkpointing.restore(checkpoints, start_step,
                                  checkpointing.abstract(state))
    logging.info("resumed %s from step %d", workdir, start_step)
  return state, start_step


def compile_step(functions, state, super_batch, ref_batch, key, reference):
  """The jitted train step compiled for these (first) inputs, and its FLOPs
  (`flops.measure_flops` plus the whole step's `flops/step` and
  `flops/ratio_to_iid`, and the reference cache's build cost)."""
  lowered = functions.jit_step().lower(state, super_batch, ref_batch, key)
  train_step = lowered.compile()
  measured = flops_lib.measure_flops(functions, state, super_batch, ref_batch,
                                     key)
  measured["flops/step"] = flops_lib.cost_flops(train_step)
  # Like for like: both from the unoptimised programs' cost analysis.
  measured["flops/ratio_to_iid"] = (flops_lib.cost_flops(lowered)
                                    / measured["flops/iid_step"])
  if reference is not None and "build_flops" in reference.manifest:
    measured["flops/reference_cache"] = reference.manifest["build_flops"]
  return train_step, measured


def train_row(config, step, step_metrics, schedule, flops, bad_records):
  """The metrics row of a log step (reads the step's metrics to the host)."""
  row = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  row["train/lr"] = float(schedule(step - 1))
  row["examples_seen"] = step * config.batch_size
  row["examples_scored"] = step * config_lib.super_batch_size(config)
  row["data/bad_records"] = bad_records
  row["flops/step"] = flops["flops/step"]
  row["flops/total"] = step * flops["flops/step"]
  return row


def corrupt_shares(rows):
  """Mean over logged `rows` of the trained corrupted share (every run) and
  of the pool's (selection runs)."""
  shares = {}
  for key in ("train/corrupt_fraction", "select/pool_corrupt_fraction"):
    values = [r[key] for r in rows if key in r]
    if values:
      shares[key] = float(np.mean(values))
  return shares


def _is_every(step, every, config):
  return step % every == 0 or step == config.total_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after=None, log_file=None):
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  `stop_after`: end this process after that step, with a checkpoint, as a
  preemption would (the schedule still runs to `config.total_steps`).
  `log_file`: a path (in the workdir) the run's log is appended to while it
  holds the workdir.

  Returns `(summary, state)`: `summary` has `step`, `wall_seconds` (of the
  run: this process's plus those of earlier processes it resumed, as far as
  their kept log rows record; also logged as `train/wall_seconds`), the
  final `eval/*` metrics, the `flops/*` measurements, and the mean over
  logged steps of `train/corrupt_fraction` (every run) and of
  `select/pool_corrupt_fraction` (selection runs).
  """
  t_start = time.perf_counter()
  # mesh; validation before anything is written, then the guard (workdir
  # lock, signals, OS faults) for the whole run.
  mesh = sharding.make_mesh(config.mesh.num_devices,
                            config.mesh.get("fsdp", 1))
  if not config.data.tokenizer:  # A learner takes its reference's tokenizer.
    config.data.tokenizer = tokenizer_lib.reference_tokenizer(config)
  config_lib.validate(config, num_devices=mesh.size)
  with run_guard.RunGuard(workdir) as guard, metrics_lib.file_log(log_file):
    return _train_and_evaluate(config, workdir, mesh, guard, t_start,
                               stop_after)


def _train_and_evaluate(config, workdir, mesh, guard, t_start, stop_after):
  lead = jax.process_index() == 0
  if lead:
    checkpointing.save_config(workdir, config)

  # data and reference embeddings
  super_batch_size = config_lib.super_batch_size(config)
  reference = load_reference(config)
  train_input = input_pipeline.TrainInput(config.data, config.data.split,
                                          super_batch_size, config.seed,
                                          reference=reference)
  tokenizer = input_pipeline.tokenizer(config.data)
  if lead:
    try:
      tokenizer_lib.record_in_workdir(workdir, tokenizer)
    except tokenizer_lib.TokenizerMismatch as e:
      raise TrainingError(str(e)) from None

  # model, optimiser, checkpoint / resume
  model = build_model(config, tokenizer.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
  state = init_state(model, optimizer, config, mesh, train_input.image_shape,
                     config.data.max_tokens)
  checkpoints = checkpointing.manager(workdir,
                                      max_to_keep=config.keep_checkpoints)
  state, start_step = resume(checkpoints, state, workdir, config.resume_step)
  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=lead)
  # The run's wall seconds so far: earlier processes' (their last kept log
  # row; work lost to a fault after it is not counted) plus this one's.
  earlier_seconds = next((row["train/wall_seconds"] for row in
                          reversed(writer.kept)
                          if "train/wall_seconds" in row), 0.0)

  def run_seconds():
    return earlier_seconds + time.perf_counter() - t_start

  # step (compiled before the loop from the first step's inputs) and evals
  functions = StepFunctions(model, optimizer, config, mesh)
  patch_sizes = {"": functions.small_patch}
  if config.patch.eval_large:
    patch_sizes["large/"] = functions.large_patch
  evaluators = evaluate.build(config, model, mesh, patch_sizes, tokenizer)
  base_key = jax.random.key(config.seed)
  # Jitted: on CPU an eager fold_in blocks until the queued step is done
  # (measured; README, "The training loop against the compiled step").
  step_key = jax.jit(jax.random.fold_in)
  last_step = config.total_steps
  if stop_after is not None:
    last_step = min(last_step, stop_after)
  flops, train_step = {}, None
  if start_step < last_step:
    first_batch = device_batch(train_input, start_step + 1, mesh)
    train_step, flops = compile_step(
        functions, state, *first_batch,
        step_key(base_key, start_step + 1), reference)
    if lead:
      (epath.Path(workdir) / "flops.json").write_text(
          json.dumps(flops, indent=2, sort_keys=True))
  progress = metrics_lib.Progress(config.total_steps, start_step,
                                  super_batch_size, name=config.method,
                                  enabled=lead)

  def check_finite(step):  # Every step since the last check.
    guard.check_finite(step, checkpoints.all_steps(), config.optim.lr)

  # loop: batch -> step -> log / eval / checkpoint
  final_eval, logged = {}, []
  step = start_step
  for step in range(start_step + 1, last_step + 1):
    super_batch, ref_batch = (
        first_batch if step == start_step + 1
        else device_batch(train_input, step, mesh))
    state, step_metrics = train_step(state, super_batch, ref_batch,
                                     step_key(base_key, step))
    guard.record(step, step_metrics.pop("train/finite"))

    row = {}
    if _is_every(step, config.log_every, config):
      row = train_row(config, step, step_metrics, schedule, flops,
                      train_input.bad_records)
      check_finite(step)
      guard.share_stop()  # Several processes: a local Ctrl-C.
      row["train/examples_per_s"], row["train/step_seconds"] = progress.log(
          step, row["train/loss"])
      row["train/wall_seconds"] = run_seconds()
      logged.append(row)
    if evaluators.due(step):
      with progress.excluded():
        results = evaluators.run(state.params, step)
      final_eval.update(results)
      row.update(results)
      row.setdefault("examples_seen", step * config.batch_size)
      progress.eval(step, results)
    if row:
      writer.write(step, row)
    stop = guard.should_stop(step)  # A signal: save, then stop.
    if step % config.checkpoint_every == 0 or step == last_step or stop:
      with progress.excluded():
        check_finite(step)
        checkpointing.save(checkpoints, step, state)
        checkpoints.wait_until_finished()
        guard.saved()
    if stop:
      writer.close()
      train_input.close()
      progress.close()
      raise guard.preempted(step)
  checkpoints.wait_until_finished()
  writer.close()
  train_input.close()
  progress.close()

  if not final_eval:  # Already finished before this process started.
    final_eval = evaluators.run(state.params)
  rows = metrics_lib.read_metrics(workdir) if lead else logged
  summary = dict(step=int(step), wall_seconds=run_seconds(),
                 **final_eval, **flops, **corrupt_shares(rows))
  return summary, state


def model_description(config):
  return json.loads(config.model.to_json_best_effort())
