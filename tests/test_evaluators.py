"""Evaluators of `config.evals` on tiny data made here, each against a NumPy
twin computed from the same embeddings (whole arrays, no batching, no
blocks, full sorts)."""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax import sharding
from jest_jax.data import convert_folder
from jest_jax.data import corpus

SIZE = 8
DIM = 6
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50),
           "blue": (40, 70, 235), "grey": (128, 128, 128),
           "black": (0, 0, 0), "white": (255, 255, 255),
           "pink": (250, 150, 200), "brown": (120, 70, 20)}


@pytest.fixture(autouse=True)
def _restore_active_tokenizer():
  yield
  input_pipeline._active_tokenizer = None  # pylint: disable=protected-access


class LinearTwoTower:
  """A stand-in two-tower model with fixed weights: images projected
  linearly, tokens embedded and averaged (what `Encoder` calls)."""

  def __init__(self, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    self.params = {
        "image": jnp.asarray(rng.normal(size=(SIZE * SIZE * 3, DIM)),
                             jnp.float32),
        "text": jnp.asarray(rng.normal(size=(vocab_size, DIM)), jnp.float32)}

  def apply(self, variables, images, tokens, patch_size=None):
    del patch_size
    params = variables["params"]
    zimg = ztxt = None
    if images is not None:
      zimg = images.reshape(len(images), -1) @ params["image"]
    if tokens is not None:
      ztxt = params["text"][tokens].mean(axis=1)
    return zimg, ztxt, None

  def numpy_images(self, images):
    x = images.astype(np.float32) / 127.5 - 1.0
    return x.reshape(len(x), -1) @ np.asarray(self.params["image"])

  def numpy_texts(self, tokens):
    return np.asarray(self.params["text"])[tokens].mean(axis=1)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def naive_ranks(queries, keys, targets):
  """The target's position in each query's stably sorted key list."""
  sims = queries @ keys.T
  return np.array([list(np.argsort(-sims[i], kind="stable")).index(t)
                   for i, t in enumerate(targets)])


def make_labelled_folder(root, n=64):
  """Coloured squares; caption and label name the colour."""
  rng = np.random.default_rng(1)
  rows = []
  for i in range(n):
    name, colour = list(COLOURS.items())[i % len(COLOURS)]
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    pixels[2:10, 2:10] = colour
    Image.fromarray(pixels).save(os.path.join(root, f"{i}.png"))
    rows.append({"image": f"{i}.png", "caption": f"a {name} square",
                 "label": name})
  with open(os.path.join(root, "captions.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return rows


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("labelled"))
  rows = make_labelled_folder(root)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = convert_folder.convert(
      root, {"train": os.path.join(root, "captions.jsonl")}, "colours",
      data_dir, vocab_size=30, model_type="word", holdout=0.5)
  return root, rows, data_dir, report


def run_config(data_dir, name="colours"):
  config = config_lib.base_config()
  config.data.update(dict(name="tfds", tfds_name=name, data_dir=data_dir,
                          image_size=SIZE, max_tokens=6))
  config.model.image.image_size = SIZE
  config.eval.batch_size = 7  # Leaves a padded last batch.
  config.total_steps = 10
  config.eval_every = 5
  return config


def build(config):
  tokenizer = input_pipeline.tokenizer(config.data)
  model = LinearTwoTower(tokenizer.vocab_size)
  evaluators = evaluate.build(config, model, sharding.make_mesh(1),
                              tokenizer=tokenizer)
  return evaluators, model, tokenizer


def test_true_ranks_blockwise_match_a_full_stable_sort_with_ties():
  rng = np.random.default_rng(0)
  # Rounded to few values, so many similarities tie.
  queries = np.round(rng.normal(size=(23, 3)))
  keys = np.round(rng.normal(size=(17, 3)))
  targets = rng.integers(0, 17, 23)
  np.testing.assert_array_equal(
      evaluate.true_ranks(queries, keys, targets, block=5),
      naive_ranks(queries, keys, targets))


def test_held_out_zeroshot_matches_numpy_twin(labelled):
  _, rows, data_dir, report = labelled
  config = run_config(data_dir)
  config.evals.zeroshot.templates = "a {} square|{}|the {} one"
  evaluators, model, tokenizer = build(config)
  zeroshot = [e for e in evaluators.evaluators if e.name == "zeroshot"][0]
  assert zeroshot.description == "colours:validation"
  results = evaluators.run(model.params)

  split = input_pipeline.load_split(_with_split(config, "validation"),
                                    "validation")
  names = report["class_names"]
  assert names == sorted(COLOURS)
  templates = ["a {} square", "{}", "the {} one"]

  def twin_ranks(templates):
    class_emb = unit(np.stack([
        unit(model.numpy_texts(tokenizer.encode(
            [t.format(name) for t in templates], 6))).mean(axis=0)
        for name in names]))
    image_emb = unit(model.numpy_images(split.arrays["image"]))
    return naive_ranks(image_emb, class_emb, split.arrays["label"])
  ranks = twin_ranks(templates)
  # The data tells the prompt ensemble from a single prompt.
  single = twin_ranks(templates[:1])
  assert any(np.mean(ranks < k) != np.mean(single < k) for k in (1, 5))
  assert len(ranks) == report["splits"]["validation"]["kept"]
  assert len(ranks) % config.eval.batch_size  # The last batch was padded.
  np.testing.assert_allclose(results["eval/zeroshot/top1"],
                             np.mean(ranks < 1), atol=1e-6)
  np.testing.assert_allclose(results["eval/zeroshot/top5"],
                             np.mean(ranks < 5), atol=1e-6)
  assert results["eval/zeroshot_top1"] == results["eval/zeroshot/top1"]


def _with_split(config, split):
  data = config.data.copy_and_resolve_references()
  data.split = split
  return data


def test_retrieval_matches_naive_twin_with_a_padded_last_batch(labelled):
  _, _, data_dir, _ = labelled
  config = run_config(data_dir)
  config.evals.retrieval.preset = ""
  config.evals.retrieval.data.split = "train"
  config.evals.zeroshot.preset = "builtin"
  config.evals.zeroshot.every = 1000  # Not due before the last step.
  evaluators, model, _ = build(config)
  assert not evaluators.due(3) and evaluators.due(5)
  results = evaluators.run(model.params, step=5)
  assert not any(key.startswith("eval/zeroshot") for key in results)

  split = input_pipeline.load_split(_with_split(config, "train"), "train")
  assert len(split) % config.eval.batch_size
  image_emb = unit(model.numpy_images(split.arrays["image"]))
  text_emb = unit(model.numpy_texts(split.arrays["tokens"]))
  target = np.arange(len(split))
  i2t = naive_ranks(image_emb, text_emb, target)
  t2i = naive_ranks(text_emb, image_emb, target)
  for k in (1, 5, 10):
    np.testing.assert_allclose(results[f"eval/retrieval/i2t_r{k}"],
                               np.mean(i2t < k), atol=1e-6)
    np.testing.assert_allclose(results[f"eval/retrieval/t2i_r{k}"],
                               np.mean(t2i < k), atol=1e-6)
  assert results["eval/i2t_r1"] == results["eval/retrieval/i2t_r1"]
  assert results["eval/t2i_r1"] == results["eval/retrieval/t2i_r1"]


def test_class_names_and_templates_come_from_lists_or_files(tmp_path):
  path = tmp_path / "names.txt"
  path.write_text("cat\n\ndog\n")
  assert evaluate._text_list(str(path), "x") == ["cat", "dog"]  # pylint: disable=protected-access
  assert evaluate._text_list("a {}|the {}", "x") == ["a {}", "the {}"]  # pylint: disable=protected-access
  assert evaluate._text_list(["a", "b"], "x") == ["a", "b"]  # pylint: disable=protected-access


def test_builtin_evals_while_training_on_other_data_warn_once(tmp_path,
                                                               caplog):
  root = str(tmp_path / "folder")
  os.makedirs(root)
  make_labelled_folder(root, n=8)
  data_dir = str(tmp_path / "tfds")
  convert_folder.convert(root, {"train": os.path.join(root, "captions.jsonl")},
                         "no_holdout", data_dir, vocab_size=30,
                         model_type="word")
  config = run_config(data_dir, "no_holdout")
  with caplog.at_level(logging.WARNING):
    evaluators, _, _ = build(config)
  assert all(e.builtin for e in evaluators.evaluators)
  warnings = [r for r in caplog.records if "built-in corpus" in r.getMessage()
              and r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "no_holdout" in warnings[0].getMessage()


def test_builtin_v2_probes_add_tail_and_hard_negative_metrics(tmp_path):
  """Version 2's probes: zero-shot on the rare half of the concepts and on
  those the curated split lacks, and the own caption against its one-
  attribute hard negatives — each equal to a naive twin."""
  from jest_jax.data import corpus_v2  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.data.update(dict(corpus_version=2, data_dir=str(tmp_path),
                          n_train=64, n_curated=0, n_retrieval=50,
                          n_zeroshot=192, image_size=SIZE))
  config.model.image.image_size = SIZE
  config.eval.batch_size = 7
  evaluators, model, tokenizer = build(config)
  cfg = input_pipeline.corpus_config(config.data)
  zeroshot = input_pipeline.load_split(_with_split(config, "zeroshot"),
                                       "zeroshot")
  labels = zeroshot.arrays["label"]
  templates = corpus.prompt_templates(cfg)

  def class_embeddings():
    return unit(np.stack([
        unit(model.numpy_texts(tokenizer.encode(
            [t.format(name) for t in templates], config.data.max_tokens))
             ).mean(axis=0) for name in corpus.class_names(cfg)]))
  # Image weights fitted to the class embeddings of the rare and the
  # curated-missing concepts only, so those groups score well above the
  # rest and each metric depends on which images it counts.
  rare = np.argsort(corpus_v2.concept_probabilities(cfg),
                    kind="stable")[:corpus_v2.N_CONCEPTS // 2]
  missing = corpus_v2.missing_concepts(cfg)
  fit = np.isin(labels, np.union1d(rare, missing))
  pixels = zeroshot.arrays["image"].astype(np.float32) / 127.5 - 1.0
  weights, *_ = np.linalg.lstsq(pixels.reshape(len(pixels), -1)[fit],
                                class_embeddings()[labels[fit]], rcond=None)
  model.params["image"] = jnp.asarray(weights, jnp.float32)
  results = evaluators.run(model.params)

  retrieval = input_pipeline.load_split(_with_split(config, "retrieval"),
                                        "retrieval")
  image_emb = unit(model.numpy_images(retrieval.arrays["image"]))
  text_emb = unit(model.numpy_texts(retrieval.arrays["tokens"]))
  negatives = corpus_v2.make_split(cfg, "retrieval")["hard_negatives"]
  wins = []
  for i in range(len(image_emb)):
    own = image_emb[i] @ text_emb[i]
    rivals = [image_emb[i] @ unit(model.numpy_texts(
        tokenizer.encode([str(c)], config.data.max_tokens)))[0]
              for c in negatives[i]]
    wins.append(all(own > r for r in rivals))
  assert 0 < np.mean(wins) < 1  # The twin separates right from wrong.
  np.testing.assert_allclose(results["eval/retrieval/hard_negative_acc"],
                             np.mean(wins), atol=1e-6)

  correct = naive_ranks(unit(model.numpy_images(zeroshot.arrays["image"])),
                        class_embeddings(), labels) == 0
  for key, concepts in (("tail_top1", rare), ("missing_top1", missing)):
    mask = np.isin(labels, concepts)
    assert np.mean(correct[mask]) > np.mean(correct[~mask])
    np.testing.assert_allclose(results[f"eval/zeroshot/{key}"],
                               np.mean(correct[mask]), atol=1e-6)
  np.testing.assert_allclose(results["eval/zeroshot/top1"], np.mean(correct),
                             atol=1e-6)
