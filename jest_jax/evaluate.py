"""Evaluations: zero-shot classification (prompt ensemble) and image–text
retrieval R@1 in both directions, on the built-in corpus's clean held-out
splits."""


import jax
import jax.numpy as jnp
import numpy as np

from jest_jax import input_pipeline
from jest_jax import sharding
from jest_jax.data import corpus


def preprocess_images(images):
  """uint8 `[n, H, W, 3]` -> float32 in [-1, 1] (on device, inside jit)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


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


def zeroshot_classifier(encoder, params, config_data):
  """Class embeddings `[num_classes, d]`: the normalised mean over prompts."""
  tok = input_pipeline.tokenizer(config_data)
  names, templates = corpus.class_names(), corpus.prompt_templates()
  prompts = [t.format(name) for name in names for t in templates]
  tokens = tok.encode(prompts, config_data.max_tokens)
  emb = encoder.texts(params, tokens).reshape(len(names), len(templates), -1)
  emb = emb.mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def retrieval_r1(image_emb, text_emb):
  """R@1 for pairs aligned by row: `(image->text, text->image)`."""
  sims = image_emb @ text_emb.T
  target = np.arange(len(sims))
  return (float(np.mean(np.argmax(sims, axis=1) == target)),
          float(np.mean(np.argmax(sims, axis=0) == target)))


def evaluate(encoder, params, config_data):
  """`{"eval/zeroshot_top1", "eval/i2t_r1", "eval/t2i_r1"}` as floats."""
  # load_split caches per process: evals after the first reuse the arrays.
  zeroshot = input_pipeline.load_split(config_data, "zeroshot")
  retrieval = input_pipeline.load_split(config_data, "retrieval")
  classifier = zeroshot_classifier(encoder, params, config_data)
  image_emb = encoder.images(params, zeroshot.arrays["image"])
  predicted = np.argmax(image_emb @ classifier.T, axis=1)
  top1 = float(np.mean(predicted == zeroshot.arrays["label"]))
  i2t, t2i = retrieval_r1(
      encoder.images(params, retrieval.arrays["image"]),
      encoder.texts(params, retrieval.arrays["tokens"]))
  return {"eval/zeroshot_top1": top1, "eval/i2t_r1": i2t, "eval/t2i_r1": t2i}
