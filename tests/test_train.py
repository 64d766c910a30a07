"""The real entry points, end to end on tiny settings (like Flax's train_test).

A module fixture trains a tiny reference through the CLI and caches its
embeddings through the cache CLI; the tests then run JEST learners on top.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jest_jax import config_lib
from jest_jax import metrics as metrics_lib
from jest_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny data and schedule shared by every run here.
TINY = [
    "batch_size=16", "selection.n_chunks=4", "data.n_train=256",
    "data.n_curated=128", "data.n_retrieval=32", "data.n_zeroshot=48",
    "eval.batch_size=32", "log_every=1", "eval_every=4",
    "checkpoint_every=2", "optim.warmup_steps=1",
]


def tiny_config(name, arg, **extra):
  """`configs/NAME.py:ARG` with TINY, plus `extra` as `a__b=value` keys."""
  extra_items = [f"{key.replace('__', '.')}={value}"
                 for key, value in extra.items()]
  return config_lib.apply_overrides(config_lib.load_config(name, arg),
                              TINY + extra_items)


def run_cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def jest_config(reference_run, steps=4, **extra):
  workdir, cache_dir = reference_run
  config = tiny_config("jest", f"method=jest,filter_ratio=0.5,steps={steps}",
                       **extra)
  config.reference.cache_dir = cache_dir
  config.reference.workdir = workdir
  return config


def params_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_reference_cli_writes_metrics_checkpoints_and_cache(reference_run):
  workdir, cache_dir = reference_run
  rows = metrics_lib.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in ("examples_seen", "train/loss", "train/corrupt_fraction"):
    assert key in rows[0]
  for key in ("eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1"):
    assert 0.0 <= rows[-1][key] <= 1.0
  assert rows[-1]["train/corrupt_fraction"] == 0.0  # Curated split is clean.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  with open(os.path.join(cache_dir, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["count"] == 256 and manifest["checkpoint_step"] == 4


def test_cache_equals_direct_reference_inference(reference_run):
  workdir, cache_dir = reference_run
  from jest_jax import cache_reference, evaluate, input_pipeline, sharding
  config = cache_reference.load_run_config(workdir)
  params, _ = train.restore_params(workdir)
  model = train.build_model(
      config, input_pipeline.tokenizer(config.data).vocab_size)
  split = input_pipeline.load_split(config.data, "train")
  zimg, ztxt, _ = model.apply(
      {"params": params},
      evaluate.preprocess_images(split.arrays["image"][:16]),
      split.arrays["tokens"][:16])
  from jest_jax import reference_cache
  image, text, _, _ = reference_cache.open_cache(
      cache_dir, dataset_fingerprint=split.fingerprint,
      count=len(split)).read(np.arange(16))
  np.testing.assert_allclose(image[:16], zimg, atol=1e-5)
  np.testing.assert_allclose(text[:16], ztxt, atol=1e-5)
  del sharding


def test_jest_cli_logs_selection_metrics(reference_run, tmp_path):
  workdir, cache_dir = reference_run
  overrides = [f"--config.{item}" for item in TINY]
  result = run_cli(
      "jest_jax.main", "--config",
      "configs/jest.py:method=jest,filter_ratio=0.5,steps=2", *overrides,
      f"--config.reference.cache_dir={cache_dir}",
      f"--config.reference.workdir={workdir}", "--workdir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = metrics_lib.read_metrics(str(tmp_path))
  for key in ("train/corrupt_fraction", "select/pool_corrupt_fraction",
              "select/score", "select/score_uniform", "examples_scored"):
    assert key in rows[-1]
  assert rows[-1]["examples_scored"] == 2 * rows[-1]["examples_seen"]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["step"] == 2 and "eval/zeroshot_top1" in summary
  # A person reads the progress line; the structured log is in the workdir.
  assert "jest step 2/2 | loss " in result.stdout
  assert "metrics.py:" not in result.stderr  # No absl INFO lines there.
  log = (tmp_path / "train.log").read_text()
  assert "] jest step 2/2 | loss " in log


def test_same_seed_gives_identical_params(reference_run, tmp_path):
  config = jest_config(reference_run, steps=2)
  _, state_a = train.train_and_evaluate(config, str(tmp_path / "a"))
  _, state_b = train.train_and_evaluate(config, str(tmp_path / "b"))
  for x, y in zip(jax.tree.leaves(state_a.params),
                  jax.tree.leaves(state_b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_after_checkpoint_equals_uninterrupted_run(reference_run,
                                                          tmp_path):
  config = jest_config(reference_run, steps=4)
  _, uninterrupted = train.train_and_evaluate(config, str(tmp_path / "full"))
  resumed_dir = str(tmp_path / "resumed")
  first, _ = train.train_and_evaluate(config, resumed_dir, stop_after=2)
  assert metrics_lib.read_metrics(resumed_dir)[-1]["step"] == 2
  started = time.perf_counter()
  second, resumed = train.train_and_evaluate(config, resumed_dir)
  elapsed = time.perf_counter() - started
  params_close(uninterrupted.params, resumed.params, rtol=1e-6, atol=1e-7)
  rows = metrics_lib.read_metrics(resumed_dir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  # The run's wall clock continues across the resume: the second process
  # adds its own seconds to the first's last logged ones, not to zero.
  seconds = [r["train/wall_seconds"] for r in rows]
  assert seconds == sorted(seconds) and seconds[1] <= first["wall_seconds"]
  assert (seconds[1] + 0.9 * elapsed - 0.1 < second["wall_seconds"]
          <= seconds[1] + elapsed)
  full_rows = metrics_lib.read_metrics(str(tmp_path / "full"))
  np.testing.assert_allclose([r["train/loss"] for r in rows],
                             [r["train/loss"] for r in full_rows], rtol=1e-6)


def test_eight_devices_match_one_device(reference_run, tmp_path):
  assert len(jax.devices()) == 8
  one = jest_config(reference_run, steps=2, mesh__num_devices=1)
  eight = jest_config(reference_run, steps=2, mesh__num_devices=8)
  _, state_one = train.train_and_evaluate(one, str(tmp_path / "one"))
  _, state_eight = train.train_and_evaluate(eight, str(tmp_path / "eight"))
  losses_one = [r["train/loss"] for r in
                metrics_lib.read_metrics(str(tmp_path / "one"))]
  losses_eight = [r["train/loss"] for r in
                  metrics_lib.read_metrics(str(tmp_path / "eight"))]
  np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-5)
  # Adam turns reduction-order noise in near-zero gradients into updates of
  # up to ~lr/100; a different selection would move params by ~lr (1e-3).
  params_close(state_one.params, state_eight.params, rtol=1e-4, atol=1e-4)


def test_cache_from_other_data_is_refused_before_training(reference_run,
                                                          tmp_path):
  config = jest_config(reference_run, steps=2)
  config.data.n_train = 512
  with pytest.raises(train.TrainingError, match="built for dataset"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_non_finite_loss_stops_with_a_clear_error_and_writes_no_checkpoint(
    tmp_path):
  config = tiny_config("jest", "method=iid,steps=2",
                       model__temperature_init=float("inf"))
  with pytest.raises(train.TrainingError,
                     match="non-finite training loss.*at step 1.*optim.lr"):
    train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == []


def test_cli_config_error_is_one_line_naming_the_key(tmp_path):
  result = run_cli("jest_jax.main", "--config",
                   "configs/jest.py:method=iid",
                   "--config.selection.filter_ratio=1.5",
                   "--workdir", str(tmp_path))
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.selection.filter_ratio=1.5"), (
      result.stderr[-2000:])


# ------------------------------------------- does the trainer really select --


@pytest.fixture(scope="module")
def oracle_cache(reference_run, tmp_path_factory):
  """A reference cache that knows the corruption: a clean pair's image and
  text share one random unit vector, a corrupted pair's do not (its text is
  another record's vector), with a sharp temperature. Learnability then
  ranks every clean pair above every corrupted one, but only if each
  example is scored with its own cache row."""
  from jest_jax import input_pipeline, reference_cache
  _, cache_dir = reference_run
  manifest = reference_cache.read_manifest(cache_dir)
  config = tiny_config("jest", "method=jest,filter_ratio=0.5")
  corrupt = input_pipeline.load_split(config.data, "train").arrays["corrupt"]
  rng = np.random.default_rng(0)
  image = rng.normal(size=(len(corrupt), manifest["dim"])).astype(np.float32)
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text = image.copy()
  text[corrupt] = np.roll(image, 1, axis=0)[corrupt]
  output = str(tmp_path_factory.mktemp("oracle") / "cache")
  reference_cache.write(
      output, image, text, temperature=20.0, bias=-10.0,
      dataset_fingerprint=manifest["dataset_fingerprint"],
      checkpoint_fingerprint="oracle", checkpoint_step=0,
      model_description={"oracle": True}, shard_bytes=64 << 10)
  return output, float(np.mean(corrupt))


def oracle_config(oracle_cache, steps=4, **extra):
  config = tiny_config("jest", f"method=jest,filter_ratio=0.5,steps={steps}",
                       **extra)
  config.reference.cache_dir = oracle_cache[0]
  return config


def test_jest_selected_batches_score_above_uniform_batches(reference_run,
                                                           tmp_path):
  train.train_and_evaluate(jest_config(reference_run, steps=4), str(tmp_path))
  rows = metrics_lib.read_metrics(str(tmp_path))
  assert len(rows) == 4
  for row in rows:
    assert row["select/score"] > row["select/score_uniform"], row


def test_jest_trains_on_fewer_corrupted_pairs_than_the_pool_holds(
    oracle_cache, tmp_path):
  summary, _ = train.train_and_evaluate(oracle_config(oracle_cache),
                                        str(tmp_path))
  pool = summary["select/pool_corrupt_fraction"]
  assert 0.3 < pool < 0.7  # The tiny noisy split: about half corrupted.
  # 16 of 32 chosen, about 16 clean on offer: almost no corrupted pair.
  assert summary["train/corrupt_fraction"] < 0.5 * pool, summary


def test_iid_logs_the_trained_corrupt_share_but_no_selection_metrics(
    tmp_path):
  train.train_and_evaluate(tiny_config("jest", "method=iid,steps=1"),
                           str(tmp_path))
  (row,) = metrics_lib.read_metrics(str(tmp_path))
  assert 0.0 <= row["train/corrupt_fraction"] <= 1.0
  assert not [key for key in row if key.startswith("select/")]


def test_step_trains_on_what_selection_picks_from_the_batch_own_cache_rows(
    oracle_cache, tmp_path):
  """Twin of the reference join: the examples the trainer's first step
  trains on are those `selection.select` picks when each super-batch row is
  scored with the cache row of its record index (seen through the
  optimiser's first moments, which are the gradient of that sub-batch)."""
  from jest_jax import input_pipeline, optim, reference_cache, selection
  from jest_jax import sharding
  config = oracle_config(oracle_cache, steps=1, mesh__num_devices=1)
  _, trained = train.train_and_evaluate(config, str(tmp_path))

  train_input = input_pipeline.TrainInput(
      config.data, config.data.split, config_lib.super_batch_size(config),
      config.seed)
  super_batch = train_input.batch(0)
  cache = reference_cache.open_cache(
      config.reference.cache_dir,
      dataset_fingerprint=train_input.fingerprint, count=len(train_input))
  image_shape = train_input.image_shape
  train_input.close()
  rows = np.asarray(super_batch.pop("index"))
  reference = train.StepFunctions.as_float32(cache.read(rows))
  mesh = sharding.make_mesh(1)
  model = train.build_model(
      config, input_pipeline.tokenizer(config.data).vocab_size)
  optimizer, _ = optim.make_optimizer(config.optim, config.total_steps)
  state = train.init_state(model, optimizer, config, mesh,
                           image_shape, config.data.max_tokens)
  functions = train.StepFunctions(model, optimizer, config, mesh)
  learner = functions.score(state.params, super_batch)
  # docs/design.md §2: step s selects with split(fold_in(key(seed), s))[0].
  select_key, update_key = jax.random.split(
      jax.random.fold_in(jax.random.key(config.seed), 1))
  sel = config.selection
  indices = selection.select(
      select_key, learner, reference, sub_batch_size=config.batch_size,
      method=sel.kind, scoring=sel.scoring, gain=sel.gain,
      n_chunks=sel.n_chunks, loss=sel.loss)
  sub_batch = {k: np.asarray(v)[np.asarray(indices)]
               for k, v in super_batch.items()}
  expected, _ = jax.jit(functions.update)(state, sub_batch, update_key)
  params_close(trained.opt_state, expected.opt_state, rtol=1e-4, atol=1e-7)


def test_local_scope_selects_within_each_shard_through_the_trainer(
    oracle_cache, tmp_path):
  # 8 shards of 4 scored rows, each selecting 2 of its own (one chunk each).
  config = oracle_config(oracle_cache, mesh__num_devices=8,
                         selection__scope="local", selection__n_chunks=2)
  summary, _ = train.train_and_evaluate(config, str(tmp_path))
  rows = metrics_lib.read_metrics(str(tmp_path))
  for row in rows:
    assert row["select/score"] > row["select/score_uniform"], row
  assert (summary["train/corrupt_fraction"]
          < 0.5 * summary["select/pool_corrupt_fraction"]), summary


def test_clip_score_filtering_drops_corrupted_pairs_at_about_an_iid_step(
    oracle_cache, tmp_path):
  """Reference-only scoring needs no learner pass over the super-batch, so
  its compiled step costs about an IID step (JEST's scores B extra rows)."""
  config = oracle_config(oracle_cache)
  config.selection.update(kind="independent_topk", scoring="easy_reference")
  summary, _ = train.train_and_evaluate(config, str(tmp_path / "clip"))
  assert summary["train/corrupt_fraction"] < 0.5 * summary[
      "select/pool_corrupt_fraction"], summary
  assert summary["flops/ratio_to_iid"] < 1.1, summary
  assert "flops/score" not in summary
  jest, _ = train.train_and_evaluate(oracle_config(oracle_cache),
                                     str(tmp_path / "jest"))
  assert jest["flops/ratio_to_iid"] > 1.5, jest
