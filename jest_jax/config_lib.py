"""Configs: defaults, loading, `key=value` overrides and validation.

Config files in `configs/` build on `base_config()`; `load_config` runs one
(`configs/NAME.py` or a path, with its `key=value,...` argument);
`apply_overrides` sets dotted keys from `key=value` strings (the demo's and
cache builder's `--set`); `parse_arg` reads a config file's argument. All
three convert values the same way (`_convert`). `validate(config)` is the one
place that turns a bad value into a `ConfigError` naming the key and the fix
(the CLI prints it as one line).
"""

import difflib
import importlib.util
import math
import os
import re

import ml_collections

import jest_jax
from jest_jax import input_pipeline
from jest_jax import selection
from jest_jax.data import images

# The allowed values of each choice are the owning module's.
SELECTIONS = selection.METHODS
SCORINGS = selection.SCORINGS
LOSSES = selection.LOSSES
SCOPES = selection.SCOPES
PATCH_SPLITS = ("random", "interleave")
PATCH_SCORES = ("small", "large")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(jest_jax.__file__))), "configs")
# `config.method` is a free label naming the run (log lines, tables, run
# directories); what the run does is in `config.selection` and `config.patch`.
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(ValueError):
  """A config value is unusable; the message names the key and the fix."""


def _convert(name, old, value):
  """`value` (a command-line string, or any value) as the type of `old`, the
  key's current value; bools accept true/false/1/0. `name` is for errors."""
  if isinstance(old, bool):
    if isinstance(value, str):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"{name}={value!r}: use true or false")
      return value.lower() in ("true", "1")
    return bool(value)
  if old is None:
    return value
  try:
    return type(old)(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r}: expected "
                      f"{type(old).__name__}") from None


def parse_overrides(overrides):
  """`["a.b=v", ...]` or `{"a.b": v}` -> `[(key, value), ...]`."""
  if hasattr(overrides, "items"):
    return list(overrides.items())
  pairs = []
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"override {item!r} is not key=value")
    pairs.append((key, value))
  return pairs


def apply_overrides(config, overrides, name="config"):
  """Sets dotted keys of `config` in place from `key=value` strings or a
  `{key: value}` dict, converting each value to the key's current type;
  returns `config`. Unknown keys are an error listing the known ones."""
  for key, value in parse_overrides(overrides):
    parent = config
    *path, leaf = key.split(".")
    try:
      for part in path:
        parent = parent[part]
      old = parent[leaf]
    except (KeyError, AttributeError, TypeError):
      known = sorted(parent.keys()) if hasattr(parent, "keys") else []
      raise ConfigError(f"no such {name} key: {key!r}; known: "
                        f"{known}") from None
    parent[leaf] = _convert(f"{name}.{key}", old, value)
  return config


def parse_arg(arg, **defaults):
  """Parses big_vision-style `key=value,key2=value2` config arguments.

  Values are converted to the type of the default (bool accepts
  true/false/1/0). Unknown keys are an error.
  """
  parsed = ml_collections.ConfigDict(dict(defaults))
  for key, value in parse_overrides(item for item in (arg or "").split(",")
                                    if item):
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f"did you mean {close[0]}? " if close else ""
      raise ConfigError(f"unknown config argument {key!r}; {hint}"
                        f"known keys: {sorted(defaults)}")
    parsed[key] = _convert(f"config argument {key}", defaults[key], value)
  return parsed


def load_config(name, arg=None):
  """`configs/NAME.py` (or a path to a config file) with its argument `arg`
  -> the ConfigDict its `get_config(arg)` returns."""
  path = name if name.endswith(".py") else os.path.join(CONFIG_DIR,
                                                        f"{name}.py")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path} not found; configs/ lives in a "
                      "jest_jax checkout")
  module_name = "jest_jax_config_" + os.path.basename(path)[:-3]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config():
  """Defaults shared by every run: the CPU demo scale on the built-in corpus."""
  config = ml_collections.ConfigDict()
  config.method = "iid"  # A label naming the run; config files derive the rest.
  config.seed = 0
  config.total_steps = 1500
  config.batch_size = 64  # The trained sub-batch, b.
  config.loss = "sigmoid"  # The training loss (SigLIP); "softmax" for CLIP.
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  config.keep_checkpoints = 2
  # Roll back to this checkpoint step (deleting later ones) before
  # resuming; 0: resume from the latest (docs/design.md §9).
  config.resume_step = 0

  # The data (jest_jax/input_pipeline.py): the built-in corpus, or a prepared
  # TFDS dataset in ArrayRecord files (e.g. a converted folder).
  config.data = ml_collections.ConfigDict()
  config.data.name = "builtin"  # "builtin" or "tfds".
  config.data.split = "train"
  config.data.data_dir = ""  # "": $JEST_JAX_DATA_DIR or data_cache/tfds.
  config.data.tfds_name = ""  # name="tfds": "name[/config][:version]".
  config.data.image_key = "image"  # name="tfds": the feature names.
  config.data.text_key = "caption"
  config.data.corrupt_key = ""  # Optional bool feature (ground truth).
  config.data.tokenizer = ""  # A SentencePiece .model; "": the data's own.
  # Preprocessing on the host: decode, crop, resize, tokenize, pad / cut.
  config.data.image_size = 32
  config.data.crop = "center"  # "center" (square crop first) or "none".
  config.data.resize_method = "bilinear"
  config.data.max_tokens = 16  # Token budget of a caption, eos included.
  # Bad records (undecodable image, missing / empty caption): "skip" (replace
  # by the next good record, counted and logged) or "error".
  config.data.bad_records = "skip"
  config.data.long_captions = "truncate"  # Or "bad": a bad record.
  # Loading: batches read ahead (threads) and worker processes (0: none).
  # One thread: the built-in corpus's reads hold the GIL, and a second
  # thread cost ~15% more host CPU a batch for no more batches a second
  # (benchmarks/loop_overhead.py, README); JPEG decoding releases it, so
  # data with large images gains from more (or from num_workers).
  config.data.prefetch = 1
  config.data.num_workers = 0
  # The built-in corpus (also the zero-shot / retrieval probes of any data).
  config.data.seed = 0
  config.data.n_train = 100_000
  config.data.n_curated = 30_000
  config.data.n_retrieval = 1_000
  config.data.n_zeroshot = 1_000
  config.data.noise_rate = 0.5
  # Corpus version 2 (web-like; jest_jax/data/corpus_v2.py explains each
  # knob and its default): long-tailed concepts, near-duplicates, a curated
  # split with gaps. Version 1 is the first round's corpus, kept exact.
  config.data.corpus_version = 1
  config.data.zipf_exponent = 1.0
  config.data.scene_mix = (0.55, 0.15, 0.30)  # One object, group, pair.
  config.data.duplicate_rate = 0.3
  config.data.duplicate_paraphrase = 0.5
  config.data.curated_balance = "balanced"  # Or "pool".
  config.data.curated_missing = 0.25
  config.data.n_hard_negatives = 4

  config.model = ml_collections.ConfigDict()
  config.model.image = ml_collections.ConfigDict(
      dict(variant="pico/8", image_size=32, pool_type="gap"))
  config.model.text = ml_collections.ConfigDict(
      dict(variant="pico", depth=1, pool_type="gap"))
  config.model.out_dim = 64
  config.model.temperature_init = 10.0
  config.model.bias_init = -10.0
  # Memory (both towers; docs/design.md §8): activation dtype ("bfloat16"
  # halves activations, parameters and optimiser state stay float32),
  # rematerialised transformer blocks, layers under nn.scan (big_vision's
  # stacked parameter layout).
  config.model.dtype = "float32"
  config.model.remat = False
  config.model.scan = False

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip = 1.0

  config.selection = ml_collections.ConfigDict()
  config.selection.kind = "uniform"
  config.selection.scoring = "learnability"
  config.selection.filter_ratio = 0.0
  config.selection.n_chunks = 16
  # exp(gain * score) in the sampler. The trainer's default; on the built-in
  # corpus gains from 1 to 100 reach alike accuracy and larger gains train on
  # fewer corrupted pairs (README, "Selection methods and the score gain").
  config.selection.gain = 10.0
  config.selection.loss = "sigmoid"
  # "global": exact selection over the whole super-batch (one psum of a
  # length-B vector per chunk); "local": each data shard selects b/D of its
  # own B/D rows, no cross-device traffic.
  config.selection.scope = "global"
  config.selection.refine_sweeps = 0

  # FlexiViT patch sizes (0: the image variant's own patch). Flexi-JEST
  # scores at `large` and trains `large_fraction` of each sub-batch at
  # `large`, the rest at `small`; evaluation is at `small` (and at `large`
  # too when `eval_large`).
  config.patch = ml_collections.ConfigDict()
  config.patch.small = 0
  config.patch.large = 0
  config.patch.large_fraction = 0.0
  config.patch.split = "random"
  config.patch.score = "small"
  config.patch.eval_large = False

  # Where the reference embeddings come from (selection runs that need them).
  config.reference = ml_collections.ConfigDict()
  config.reference.cache_dir = ""
  config.reference.workdir = ""  # Optional: verify the cache's checkpoint.

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 512
  # Named evaluators (jest_jax/evaluate.py): zero-shot and retrieval on the
  # data's held-out `validation` split if it has one, else the built-in
  # corpus's probes; logged as eval/<name>/<metric>.
  from jest_jax import evaluate  # pylint: disable=g-import-not-at-top
  config.evals = evaluate.default_evals()

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = -1  # -1: all devices.
  # Devices along the `fsdp` mesh axis (batches split over all devices;
  # parameters / optimiser state split over `fsdp` where a rule says so).
  config.mesh.fsdp = 1
  # (regex on a parameter's path, "fsdp" or "replicate"), first match wins
  # (jest_jax/sharding.py). With mesh.fsdp = 1 everything is replicated.
  config.sharding_rules = ((".*", "fsdp"),)
  return config


def super_batch_size(config):
  """B = b / (1 - f), the number of examples scored per step."""
  f = config.selection.filter_ratio
  return int(round(config.batch_size / (1.0 - f)))


def needs_learner_scores(config):
  """Whether selection scores the super-batch with the learner (reference-
  only scoring, CLIP-score filtering, reads its scores from the cache)."""
  sel = config.selection
  return sel.kind != "uniform" and sel.scoring != "easy_reference"


def needs_reference(config):
  sel = config.selection
  return sel.kind != "uniform" and sel.scoring != "hard_learner"


def validate(config, num_devices=1):
  """Raises ConfigError for the first unusable value."""
  def fail(key, why):
    raise ConfigError(f"config.{key}={_get(config, key)!r}: {why}")

  for key in ("total_steps", "batch_size", "log_every", "eval_every",
              "checkpoint_every"):
    if _get(config, key) <= 0:
      fail(key, "must be a positive integer")
  if not isinstance(config.method, str) or not _LABEL.match(config.method):
    fail("method", "a run label: letters, digits, '_', '-' or '.'")
  if config.get("resume_step", 0) < 0:
    fail("resume_step", "must be a checkpoint step, or 0 for the latest")
  if config.loss not in LOSSES:
    fail("loss", f"must be one of {LOSSES}")
  sel = config.selection
  if sel.kind not in SELECTIONS:
    fail("selection.kind", f"must be one of {SELECTIONS}")
  if sel.scoring not in SCORINGS:
    fail("selection.scoring", f"must be one of {SCORINGS}")
  if sel.loss not in LOSSES:
    fail("selection.loss", f"must be one of {LOSSES}")
  if not 0.0 <= sel.filter_ratio < 1.0:
    fail("selection.filter_ratio", "must be in [0, 1)")
  if sel.kind == "uniform" and sel.filter_ratio != 0.0:
    fail("selection.filter_ratio",
         "uniform (IID) runs train on every example they draw; use 0")
  big_b = super_batch_size(config)
  if sel.kind != "uniform":
    if not math.isclose(config.batch_size / (1.0 - sel.filter_ratio), big_b,
                        rel_tol=1e-6):
      fail("selection.filter_ratio",
           f"batch_size / (1 - filter_ratio) must be an integer "
           f"(batch_size={config.batch_size})")
    if sel.kind == "joint" and config.batch_size % sel.n_chunks:
      fail("selection.n_chunks",
           f"must divide batch_size={config.batch_size}")
    if not math.isfinite(sel.gain) or sel.gain <= 0:
      fail("selection.gain", "must be a positive number")
  if sel.scope not in SCOPES:
    fail("selection.scope", f"must be one of {SCOPES}")
  if sel.refine_sweeps < 0:
    fail("selection.refine_sweeps", "must be >= 0")
  if (sel.kind == "joint" and sel.scope == "local"
      and (config.batch_size // num_devices) % sel.n_chunks):
    fail("selection.n_chunks", f"with scope='local' it must divide the "
         f"per-device sub-batch {config.batch_size // num_devices}")
  _validate_patches(config, fail)
  _validate_memory(config, fail, num_devices)
  if needs_reference(config) and not config.reference.cache_dir:
    fail("reference.cache_dir",
         f"selection with scoring={sel.scoring!r} needs reference embeddings; "
         "build them with `python -m jest_jax.cache_reference` and pass "
         "--config.reference.cache_dir=DIR")
  for key in ("batch_size",):
    if _get(config, key) % num_devices:
      fail(key, f"must be divisible by the number of devices ({num_devices})")
  if big_b % num_devices:
    fail("selection.filter_ratio",
         f"the super-batch ({big_b}) must be divisible by the number of "
         f"devices ({num_devices})")
  if config.eval.batch_size % num_devices:
    fail("eval.batch_size",
         f"must be divisible by the number of devices ({num_devices})")
  if config.optim.lr <= 0:
    fail("optim.lr", "must be positive")
  if not 0 <= config.optim.b2 < 1:
    fail("optim.b2", "must be in [0, 1)")
  if config.optim.warmup_steps < 0:
    fail("optim.warmup_steps", "must be >= 0")
  _validate_data(config, fail)


def _validate_patches(config, fail):
  patch = config.patch
  image_size = config.model.image.get("image_size", 0)
  for key in ("small", "large"):
    size = patch[key]
    if size < 0 or (size and image_size and image_size % size):
      fail(f"patch.{key}", f"must divide the image size {image_size} "
           "(0: the variant's patch)")
  if not 0.0 <= patch.large_fraction <= 1.0:
    fail("patch.large_fraction", "must be in [0, 1]")
  if patch.split not in PATCH_SPLITS:
    fail("patch.split", f"must be one of {PATCH_SPLITS}")
  if patch.score not in PATCH_SCORES:
    fail("patch.score", f"must be one of {PATCH_SCORES}")
  needs_large = (patch.large_fraction > 0 or patch.score == "large"
                 or patch.eval_large)
  if needs_large and not patch.large:
    fail("patch.large", "set a large patch size for large_fraction > 0, "
         "score='large' or eval_large")


def _validate_memory(config, fail, num_devices):
  if config.model.dtype not in ("float32", "bfloat16"):
    fail("model.dtype", "must be 'float32' or 'bfloat16'")
  fsdp = config.mesh.fsdp
  if fsdp < 1 or num_devices % fsdp:
    fail("mesh.fsdp", f"must be a positive divisor of the number of devices "
         f"({num_devices})")
  for rule in config.sharding_rules:
    if len(rule) != 2 or rule[1] not in ("fsdp", "replicate"):
      fail("sharding_rules", "each rule is (regex, 'fsdp' or 'replicate')")


def _validate_data(config, fail):
  """The checks of `config.data` (see input_pipeline.py for the keys)."""
  data = config.data
  if data.name not in input_pipeline.NAMES:
    fail("data.name", "must be 'builtin' (the built-in corpus) or 'tfds' (a "
         "prepared TFDS dataset, e.g. a converted folder)")
  if data.name == "builtin" and data.split not in ("train", "curated"):
    fail("data.split", "the built-in corpus trains on 'train' or 'curated'")
  if data.name == "tfds" and not data.tfds_name:
    fail("data.tfds_name", "name the prepared dataset to read (e.g. the "
         "--name given to `python -m jest_jax.data.convert_folder`)")
  if data.name == "tfds" and (not data.image_key or not data.text_key):
    fail("data.image_key" if not data.image_key else "data.text_key",
         "name the dataset's image and caption features")
  if not 0.0 <= data.noise_rate <= 1.0:
    fail("data.noise_rate", "must be in [0, 1]")
  if data.image_size <= 0:
    fail("data.image_size", "must be a positive number of pixels")
  if data.image_size != config.model.image.image_size:
    fail("data.image_size", f"must equal config.model.image.image_size="
         f"{config.model.image.image_size} (the model's input)")
  if data.crop not in images.CROPS:
    fail("data.crop", f"must be one of {images.CROPS}")
  if data.resize_method not in images.RESIZE_METHODS:
    fail("data.resize_method",
         f"must be one of {tuple(images.RESIZE_METHODS)}")
  if data.max_tokens < 2:
    fail("data.max_tokens", "must leave room for a token and eos (>= 2)")
  if data.bad_records not in input_pipeline.BAD_RECORD_POLICIES:
    fail("data.bad_records",
         f"must be one of {input_pipeline.BAD_RECORD_POLICIES}")
  if data.long_captions not in input_pipeline.LONG_CAPTION_POLICIES:
    fail("data.long_captions",
         f"must be one of {input_pipeline.LONG_CAPTION_POLICIES}")
  if data.prefetch < 0 or data.num_workers < 0:
    fail("data.prefetch" if data.prefetch < 0 else "data.num_workers",
         "must be >= 0")


def _get(config, dotted):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value
