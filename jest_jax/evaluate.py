"""Evaluators named in the config, big_vision style.

`config.evals` maps a name to one evaluator's settings; its results are
logged as `eval/<name>/<metric>` (`eval/large/<name>/<metric>` at the large
patch with `config.patch.eval_large`):

  type       "zeroshot": top-1 / top-5 classification of a labelled image
             split by prompt-ensembled class embeddings (metrics `top1`,
             `top5`); "retrieval": image->text and text->image recall of
             paired rows (`i2t_r1`, `i2t_r5`, `i2t_r10`, `t2i_r1`, ...).
             On the built-in corpus's version 2 probes, zero-shot adds
             `tail_top1` (the rarer half of the pool's concepts) and
             `missing_top1` (concepts the curated split lacks), retrieval
             adds `hard_negative_acc` (the own caption beats each of its
             one-attribute hard negatives; chance 1 / (K + 1)).
  preset     "builtin": the built-in corpus's clean probe splits, class
             names and prompts (what every run reported before evaluators
             were configurable); "auto": the run's own data when it has a
             held-out `validation` split (zero-shot also needs a `label`
             feature), else the built-in probes; "": exactly `data` below.
  every      steps between evaluations (0: `config.eval_every`); every
             evaluator also runs at the last step.
  data       where the examples come from: `name`, `tfds_name`, `data_dir`,
             `split`, `image_key`, `text_key`; an empty value is the
             training data's (`config.data`), and so is the preprocessing.
             Captions are tokenized with the model's tokenizer, not the
             evaluated dataset's own.
  class_names, templates   (zeroshot) a list, a text file (one per line) or
             "|"-separated text; empty class names: the dataset's `label`
             ClassLabel names; empty templates: "{}" (the bare name).
  max_examples   the first N records of the split (0: all).

Embeddings are computed in batches of `config.eval.batch_size` (the last one
padded, so every batch has one compiled shape) and similarities a block of
rows at a time, so tens of thousands of pairs fit in host memory.

Summary keys. The evaluators named `zeroshot` and `retrieval` also report
their headline numbers under the keys the demo, README tables and
benchmarks read (`SUMMARY_KEYS`): `eval/zeroshot_top1`, `eval/i2t_r1`,
`eval/t2i_r1`.
"""

import dataclasses
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax import sharding
from jest_jax.data import corpus
from jest_jax.data import corpus_v2

TYPES = ("zeroshot", "retrieval")
PRESETS = ("builtin", "auto", "")
RETRIEVAL_KS = (1, 5, 10)
ZEROSHOT_KS = (1, 5)
HELD_OUT_SPLIT = "validation"
# Documented summary key -> the evaluator metric it reports.
SUMMARY_KEYS = {"zeroshot_top1": ("zeroshot", "top1"),
                "i2t_r1": ("retrieval", "i2t_r1"),
                "t2i_r1": ("retrieval", "t2i_r1")}
_DATA_KEYS = ("name", "tfds_name", "data_dir", "split", "image_key",
              "text_key")
# Records read per chunk when an evaluation split is loaded.
_READ_CHUNK = 1024
# Rows of the similarity matrix held at once by `recall_at_k`.
_SIMILARITY_BLOCK = 1024


def preprocess_images(images):
  """uint8 `[n, H, W, 3]` -> float32 in [-1, 1] (on device, inside jit)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def evaluator_config(type_, preset="auto", **overrides):
  """One `config.evals` entry with every key present (so `--config.evals.
  NAME.KEY=VALUE` overrides work on a locked config)."""
  entry = ml_collections.ConfigDict(dict(
      type=type_, preset=preset, every=0, max_examples=0,
      class_names="", templates=""))
  entry.data = ml_collections.ConfigDict({key: "" for key in _DATA_KEYS})
  for key, value in overrides.items():
    if key in _DATA_KEYS:
      entry.data[key] = value
    else:
      entry[key] = value
  return entry


def default_evals():
  """`config.evals` of `config_lib.base_config`: zero-shot and retrieval,
  on the run's held-out split when it has one, else the built-in probes."""
  evals = ml_collections.ConfigDict()
  evals.zeroshot = evaluator_config("zeroshot")
  evals.retrieval = evaluator_config("retrieval")
  return evals


# ------------------------------------------------------------ encoding --


class Encoder:
  """Jitted, batched image and text encoders for one model on one mesh."""

  def __init__(self, model, mesh, batch_size, patch_size=None):
    self.mesh = mesh
    self.batch_size = batch_size

    @jax.jit
    def encode_images(params, images):
      zimg, _, _ = model.apply({"params": params}, preprocess_images(images),
                               None, patch_size=patch_size)
      return zimg

    @jax.jit
    def encode_texts(params, tokens):
      _, ztxt, _ = model.apply({"params": params}, None, tokens)
      return ztxt

    self._images = encode_images
    self._texts = encode_texts

  def _batched(self, fn, params, array):
    """Applies `fn` in fixed-size batches (last one padded), `[n, d]` out."""
    n = len(array)
    outputs = []
    for start in range(0, n, self.batch_size):
      chunk = array[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      out = fn(params, sharding.put_batch(chunk, self.mesh))
      outputs.append(sharding.to_host(out)[:len(chunk) - pad])
    return np.concatenate(outputs)

  def images(self, params, images):
    return self._batched(self._images, params, images)

  def texts(self, params, tokens):
    return self._batched(self._texts, params, tokens)


def _normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------- metrics --


def true_ranks(queries, keys, targets, block=_SIMILARITY_BLOCK):
  """Rank of each query's target among all keys by dot product, computed
  `block` queries at a time (memory `[block, n_keys]`, not `[n, n_keys]`).

  Rank 0 is the best. Ties go to the lower key index, so rank 0 is exactly
  `argmax == target`.

  Args:
    queries: float `[n, d]`; keys: float `[m, d]`; targets: int `[n]` in
      `[0, m)`.
  Returns:
    int64 `[n]`.
  """
  targets = np.asarray(targets, np.int64)
  key_index = np.arange(len(keys))
  ranks = np.empty(len(queries), np.int64)
  for start in range(0, len(queries), block):
    sims = queries[start:start + block] @ keys.T
    rows = np.arange(len(sims))
    target = targets[start:start + block]
    target_sim = sims[rows, target][:, None]
    ahead = (sims > target_sim) | ((sims == target_sim)
                                   & (key_index[None] < target[:, None]))
    ranks[start:start + block] = ahead.sum(axis=1)
  return ranks


def recall_at_k(image_emb, text_emb, ks=RETRIEVAL_KS):
  """Retrieval recall of pairs aligned by row.

  Args:
    image_emb, text_emb: float `[n, d]`, row i of each is one pair.
  Returns:
    `{"i2t_r{k}", "t2i_r{k}"}`: the share of images whose own caption ranks
    in the top k of all n captions, and of captions whose own image does.
  """
  target = np.arange(len(image_emb))
  i2t = true_ranks(image_emb, text_emb, target)
  t2i = true_ranks(text_emb, image_emb, target)
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = float(np.mean(i2t < k))
    out[f"t2i_r{k}"] = float(np.mean(t2i < k))
  return out


def hard_negative_accuracy(image_emb, text_emb, hard_emb):
  """The share of images whose own caption (`text_emb[i]`) is more similar
  than each of its hard negatives (`hard_emb[i]`, `[n, K, d]`); a tie counts
  as wrong. Chance is 1 / (K + 1)."""
  true_sim = np.sum(image_emb * text_emb, axis=-1)
  hard_sim = np.einsum("nd,nkd->nk", image_emb, hard_emb)
  return float(np.mean(np.all(true_sim[:, None] > hard_sim, axis=1)))


def zeroshot_accuracy(image_emb, class_emb, labels, ks=ZEROSHOT_KS,
                      groups=None):
  """`{"top{k}"}`: the share of images whose label is among the k classes
  with the most similar embeddings (`[n, d]`, `[classes, d]`, int `[n]`);
  plus, for each `{name: bool [n]}` of `groups` with members, the top-1
  share within it."""
  ranks = true_ranks(image_emb, class_emb, labels)
  out = {f"top{k}": float(np.mean(ranks < k)) for k in ks}
  for name, mask in (groups or {}).items():
    if mask.any():
      out[name] = float(np.mean(ranks[mask] == 0))
  return out


# ---------------------------------------------------------------- data --


def _text_list(value, what):
  """A list of strings from a list, a file (one per line) or "a|b|c"."""
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  value = str(value or "")
  if not value:
    return []
  path = os.path.expanduser(value)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  if os.sep in value and "|" not in value and "{" not in value:
    raise config_lib.ConfigError(f"{what}={value!r}: no such file")
  return [part.strip() for part in value.split("|") if part.strip()]


@dataclasses.dataclass
class EvalData:
  """One evaluation split in host memory."""
  images: np.ndarray  # uint8 [n, S, S, 3]
  tokens: np.ndarray  # int32 [n, L]
  labels: np.ndarray  # int32 [n], or None
  description: str  # "dataset:split"
  dataset_dir: str
  skipped: int  # Bad records left out.


def _eval_data_config(config, entry):
  """`config.data` with the evaluator's data keys (empty ones inherit)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  for key in _DATA_KEYS:
    if entry.data.get(key, ""):
      data[key] = entry.data[key]
  return data


def load_eval_data(config_data, split, tokenizer, max_examples=0):
  """Reads `split` of `config_data`'s dataset with the model's `tokenizer`.

  Bad records are left out and counted (an evaluation reads each record
  once; the training stream's substitution would duplicate pairs).
  """
  records = input_pipeline.open_records(config_data, split)
  reader = dataclasses.replace(records.reader, tokenizer=tokenizer,
                               bad_records="skip")
  n = len(records)
  if max_examples:
    n = min(n, max_examples)
  images, tokens, labels, skipped = [], [], [], 0
  for start in range(0, n, _READ_CHUNK):
    wanted = np.arange(start, min(start + _READ_CHUNK, n))
    chunk = reader.read(wanted)
    kept = chunk["index"] == wanted  # Substituted rows are the bad ones.
    skipped += int(np.sum(~kept))
    images.append(chunk["image"][kept])
    tokens.append(chunk["tokens"][kept])
    if "label" in chunk:
      labels.append(chunk["label"][kept])
  return EvalData(
      images=np.concatenate(images), tokens=np.concatenate(tokens),
      labels=np.concatenate(labels) if labels else None,
      description=reader.description, dataset_dir=records.dataset_dir,
      skipped=skipped)


def dataset_class_names(dataset_dir):
  """The `label` feature's ClassLabel names of a prepared dataset, or []."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.builder_from_directory(dataset_dir).info.features
  feature = features["label"] if "label" in features else None
  if isinstance(feature, tfds.features.ClassLabel):
    return list(feature.names)
  return []


def _has_split(config_data, split, need_label):
  try:
    records = input_pipeline.open_records(config_data, split)
  except input_pipeline.DataError:
    return False
  return not need_label or bool(records.reader.label_key)


# ---------------------------------------------------------- evaluators --


class _Evaluator:
  """One configured evaluator: its data (loaded on first use) and metric."""

  def __init__(self, name, entry, config, tokenizer):
    self.name = name
    self.type = entry.type
    self.every = entry.every or config.eval_every
    self.entry = entry
    self.tokenizer = tokenizer
    self.max_tokens = config.data.max_tokens
    preset = entry.preset
    data = _eval_data_config(config, entry)
    if preset == "auto":
      preset = "builtin"
      if config.data.name != "builtin" and not entry.data.split:
        held_out = ml_collections.ConfigDict(data.to_dict())
        held_out.split = HELD_OUT_SPLIT
        if _has_split(held_out, HELD_OUT_SPLIT, self.type == "zeroshot"):
          preset, data = "", held_out
    self.builtin = preset == "builtin"
    if self.builtin:
      # The probe splits are read from the built-in corpus whatever the data.
      data = ml_collections.ConfigDict(config.data.to_dict())
      data.split = self.type
    self.config_data = data
    self._data = None
    self._class_tokens = None
    self._hard_tokens = None

  @property
  def description(self):
    if self.builtin:
      return f"built-in corpus:{self.type}"
    name = self.config_data.tfds_name or self.config_data.name
    return f"{name}:{self.config_data.split}"

  def due(self, step, total_steps):
    return step % self.every == 0 or step == total_steps

  def _load(self):
    if self._data is None:
      self._data = load_eval_data(self.config_data, self.config_data.split,
                                  self.tokenizer, self.entry.max_examples)
      if self.type == "zeroshot":
        self._class_tokens = self._prompts()
      logging.info("eval %s: %d examples of %s (%d bad records left out)",
                   self.name, len(self._data.images), self.description,
                   self._data.skipped)
    return self._data

  def _prompts(self):
    """Prompt tokens `[classes * templates, L]` (class-major)."""
    where = f"config.evals.{self.name}"
    if self.builtin:
      cfg = input_pipeline.corpus_config(self.config_data)
      names = corpus.class_names(cfg)
      templates = corpus.prompt_templates(cfg)
    else:
      names = (_text_list(self.entry.class_names, f"{where}.class_names")
               or dataset_class_names(self._data.dataset_dir))
      templates = (_text_list(self.entry.templates, f"{where}.templates")
                   or ["{}"])
    if self._data.labels is None:
      raise config_lib.ConfigError(
          f"{where}: {self.description} has no 'label' feature; zero-shot "
          "needs labelled images (a captions file with a label column)")
    if not names:
      raise config_lib.ConfigError(
          f"{where}.class_names: {self.description} stores no class names; "
          "give a list, a file or 'a|b|c'")
    if self._data.labels.max(initial=0) >= len(names):
      raise config_lib.ConfigError(
          f"{where}.class_names: {len(names)} names but labels reach "
          f"{self._data.labels.max()}")
    self._num_templates = len(templates)
    prompts = [t.format(name) for name in names for t in templates]
    return self.tokenizer.encode(prompts, self.max_tokens)

  def _corpus_v2(self):
    """The built-in corpus config when this evaluator reads version 2's
    probes (which add tail and hard-negative metrics), else None."""
    if not self.builtin:
      return None
    cfg = input_pipeline.corpus_config(self.config_data)
    return cfg if cfg.version == 2 else None

  def _hard_negative_tokens(self, cfg, n):
    """Tokens `[n, K, L]` of the first n retrieval images' hard negatives."""
    if self._hard_tokens is None:
      captions = corpus.make_split(cfg, "retrieval")["hard_negatives"][:n]
      flat = self.tokenizer.encode([str(c) for c in captions.reshape(-1)],
                                   self.max_tokens)
      self._hard_tokens = np.asarray(flat).reshape(
          captions.shape + (flat.shape[-1],))
    return self._hard_tokens

  def run(self, encoder, params):
    data = self._load()
    cfg = self._corpus_v2()
    image_emb = _normalize(encoder.images(params, data.images))
    if self.type == "retrieval":
      text_emb = _normalize(encoder.texts(params, data.tokens))
      out = recall_at_k(image_emb, text_emb)
      if cfg is not None:
        hard = self._hard_negative_tokens(cfg, len(image_emb))
        hard_emb = _normalize(encoder.texts(
            params, hard.reshape(-1, hard.shape[-1]))).reshape(
                hard.shape[:2] + (-1,))
        out["hard_negative_acc"] = hard_negative_accuracy(
            image_emb, text_emb, hard_emb)
      return out
    prompt_emb = _normalize(encoder.texts(params, self._class_tokens))
    class_emb = _normalize(prompt_emb.reshape(
        -1, self._num_templates, prompt_emb.shape[-1]).mean(axis=1))
    groups = None
    if cfg is not None:
      # Version 2's zero-shot label is the concept: also report the rare
      # half of the pool's concepts and those the curated split lacks.
      ranks = corpus_v2.concept_ranks()
      groups = {"tail_top1": ranks[data.labels] >= corpus_v2.N_CONCEPTS // 2,
                "missing_top1": np.isin(data.labels,
                                        corpus_v2.missing_concepts(cfg))}
    return zeroshot_accuracy(image_emb, class_emb, data.labels,
                             groups=groups)


class Evaluators:
  """The run's evaluators; `run(params, step)` evaluates those due."""

  def __init__(self, evaluators, encoders, total_steps):
    self.evaluators = evaluators  # [_Evaluator]
    self.encoders = encoders  # {key prefix: Encoder}
    self.total_steps = total_steps

  def due(self, step):
    """Whether any evaluator runs at `step`."""
    return any(e.due(step, self.total_steps) for e in self.evaluators)

  def run(self, params, step=None):
    """`{"eval/[large/]<name>/<metric>": float}` of the evaluators due at
    `step` (all of them when `step` is None), plus `SUMMARY_KEYS`."""
    results = {}
    for evaluator in self.evaluators:
      if step is not None and not evaluator.due(step, self.total_steps):
        continue
      for prefix, encoder in self.encoders.items():
        metrics = evaluator.run(encoder, params)
        for metric, value in metrics.items():
          results[f"eval/{prefix}{evaluator.name}/{metric}"] = value
        for key, (name, metric) in SUMMARY_KEYS.items():
          if name == evaluator.name and metric in metrics:
            results[f"eval/{prefix}{key}"] = metrics[metric]
    return results


def build(config, model, mesh, patch_sizes=None, tokenizer=None):
  """The evaluators of `config.evals`.

  Args:
    config: the run's config.
    model: the two-tower model (`model.apply` returns image and text
      embeddings).
    mesh: the device mesh the encoders shard batches over.
    patch_sizes: `{key prefix: patch size or None}`, e.g. `{"": None,
      "large/": 16}`; default `{"": None}` (the variant's patch).
    tokenizer: the model's tokenizer (default: `config.data`'s).
  Returns:
    `Evaluators`.
  Raises:
    config_lib.ConfigError: an unknown type or preset.
  """
  if tokenizer is None:
    tokenizer = input_pipeline.tokenizer(config.data)
  evaluators = []
  for name, entry in sorted(config.get("evals", default_evals()).items()):
    if entry.type not in TYPES:
      raise config_lib.ConfigError(f"config.evals.{name}.type={entry.type!r}:"
                                   f" use one of {TYPES}")
    if entry.preset not in PRESETS:
      raise config_lib.ConfigError(
          f"config.evals.{name}.preset={entry.preset!r}: use 'builtin', "
          "'auto' or '' (the data in config.evals.NAME.data)")
    evaluators.append(_Evaluator(name, entry, config, tokenizer))
  if config.data.name != "builtin" and evaluators and all(
      e.builtin for e in evaluators):
    logging.warning(
        "every evaluator reads the built-in corpus's probes while training "
        "on %s; its numbers say little about this data (convert it with "
        "--holdout, or set config.evals.NAME.data)",
        config.data.tfds_name or config.data.name)
  for e in evaluators:
    logging.info("eval %s (%s, every %d steps) on %s", e.name, e.type,
                 e.every, e.description)
  batch_size = config.eval.batch_size
  encoders = {
      prefix: Encoder(model, mesh, batch_size, patch_size=patch)
      for prefix, patch in (patch_sizes or {"": None}).items()}
  return Evaluators(evaluators, encoders, config.total_steps)
