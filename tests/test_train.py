"""The real entry points, end to end on tiny settings (like Flax's train_test).

A module fixture trains a tiny reference through the CLI and caches its
embeddings through the cache CLI; the tests then run JEST learners on top.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jest_jax import demo
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
  return demo.apply_overrides(demo.load_config(name, arg),
                              TINY + extra_items)


def run_cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """A 4-step reference trained and cached through the two CLIs."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  overrides = [f"--config.{item}" for item in TINY]
  result = run_cli("jest_jax.main", "--config", "configs/reference.py:steps=4",
                   *overrides, "--workdir", workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_cli("jest_jax.cache_reference", "--workdir", workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, os.path.join(workdir, "embeddings", "train")


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
  for key in ("examples_seen", "train/loss", "select/corrupt_fraction"):
    assert key in rows[0]
  for key in ("eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1"):
    assert 0.0 <= rows[-1][key] <= 1.0
  assert rows[-1]["select/corrupt_fraction"] == 0.0  # Curated split is clean.
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
  for key in ("select/corrupt_fraction", "select/pool_corrupt_fraction",
              "select/score", "select/score_uniform", "examples_scored"):
    assert key in rows[-1]
  assert rows[-1]["examples_scored"] == 2 * rows[-1]["examples_seen"]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["step"] == 2 and "eval/zeroshot_top1" in summary


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
  train.train_and_evaluate(config, resumed_dir, stop_after=2)  # "Preempted".
  assert metrics_lib.read_metrics(resumed_dir)[-1]["step"] == 2
  _, resumed = train.train_and_evaluate(config, resumed_dir)
  params_close(uninterrupted.params, resumed.params, rtol=1e-6, atol=1e-7)
  rows = metrics_lib.read_metrics(resumed_dir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
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
