"""Training and evaluation data for the built-in corpus.

A split is held in host memory as NumPy arrays (`image` uint8, `tokens`
int32, `corrupt` bool, `index` int64). The examples of step `s` are a pure
function of `(seed, s)`: each epoch is a fresh permutation seeded by
`(seed, epoch)`, and step `s` reads positions `[s * n, (s + 1) * n)` of the
concatenated epochs. A resumed run therefore reads exactly what an
uninterrupted one would have.
"""

import dataclasses
import functools
import hashlib

import numpy as np

from jest_jax.data import corpus
from jest_jax.data import tokenizer as tokenizer_lib


def corpus_config(config_data):
  return corpus.CorpusConfig(
      seed=config_data.seed, n_train=config_data.n_train,
      n_curated=config_data.n_curated, n_retrieval=config_data.n_retrieval,
      n_zeroshot=config_data.n_zeroshot, noise_rate=config_data.noise_rate,
      max_tokens=config_data.max_tokens)


@functools.lru_cache(maxsize=8)
def _cached_split(cfg, split):
  return corpus.make_split(cfg, split)


def tokenizer():
  return tokenizer_lib.corpus_tokenizer()


@dataclasses.dataclass
class Split:
  """One split in host memory, aligned by record index."""
  arrays: dict  # image, tokens, corrupt, index (+ label, caption).
  fingerprint: str

  def __len__(self):
    return len(self.arrays["index"])

  def take(self, indices, keys=("image", "tokens", "corrupt", "index")):
    return {k: self.arrays[k][indices] for k in keys}


def load_split(config_data, split):
  """Generates (or reuses, within a process) a corpus split, tokenised."""
  cfg = corpus_config(config_data)
  raw = _cached_split(cfg, split)
  arrays = dict(raw)
  tok = tokenizer()
  arrays["tokens"] = tok.encode(list(raw["caption"]), config_data.max_tokens)
  # What a model sees depends on the tokenisation too, not only the corpus.
  identity = (f"{corpus.fingerprint(cfg, split)}/{tok.vocab_size}/"
              f"{config_data.max_tokens}/{tok.decode(arrays['tokens'][:1])}")
  fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
  return Split(arrays=arrays, fingerprint=fingerprint)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed, epoch, num_examples):
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def step_indices(seed, step, batch_size, num_examples):
  """Record indices of the examples drawn at `step`, `int64[batch_size]`."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), num_examples)[offsets[sel]]
  return out


class TrainInput:
  """The training stream: super-batch `step` is a pure function of
  `(seed, step)`, so a resumed run reads what an uninterrupted one would.

  `batch(step)` returns host arrays: `image` uint8 `[B, H, W, 3]`, `tokens`
  int32 `[B, L]`, `corrupt` bool `[B]` (the corpus's ground-truth flag;
  all False for data without one) and `index` int64 `[B]` (record indices,
  which align the reference-embedding cache).
  """

  def __init__(self, config_data, split_name, batch_size, seed):
    self.split = load_split(config_data, split_name)
    self.batch_size = batch_size
    self.seed = seed

  def __len__(self):
    return len(self.split)

  @property
  def fingerprint(self):
    return self.split.fingerprint

  @property
  def image_shape(self):
    return self.split.arrays["image"].shape[1:]

  def batch(self, step):
    indices = step_indices(self.seed, step, self.batch_size, len(self.split))
    return self.split.take(indices)
