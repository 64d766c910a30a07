"""Tokenizers: SentencePiece (what the pipeline uses) and a word-level one.

Both offer `vocab_size`, `encode(texts, max_len) -> int32 [n, max_len]` and
`decode(tokens) -> list[str]`. Ids: 0 pad, 1 eos, 2 unk (for SentencePiece
models trained here; a user's `.model` keeps its own ids).

`WordTokenizer` maps the built-in corpus's closed vocabulary to ids in a fixed
order; it is the obvious twin the SentencePiece model trained on the corpus is
checked against. `train_sentencepiece` trains a model once on a dataset's
captions; `SentencePieceTokenizer` loads one.

One tokenizer per experiment. A reference model and the learners it scores
for must share token ids. A run keeps a copy of the tokenizer it trained with
in its workdir (`WORKDIR_FILE`); a reference cache records the tokenizer's
fingerprint and file in its manifest (`manifest_entry`); a learner that uses
the cache is checked against it (`check_cache_tokenizer`), and one configured
with a reference workdir and no tokenizer of its own takes the reference's
(`reference_tokenizer`). A tokenizer shared by several datasets (curated set
and pool) is trained once on all their captions:

  python -m jest_jax.data.tokenizer --captions curated.jsonl \
      --captions pool.jsonl --output runs/spm.model [--vocab_size 1024]

then given to each conversion as `convert_folder --tokenizer runs/spm.model`.
"""

from collections.abc import Sequence
import hashlib
import io
import json
import os
import sys

import numpy as np

from jest_jax.data import corpus

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# A run's copy of the tokenizer it trained with, in its workdir.
WORKDIR_FILE = "tokenizer.model"


class TokenizerMismatch(ValueError):
  """Two parts of one experiment use different tokenizers; the message names
  both files and the fix."""
_SPECIAL = ("<pad>", "<eos>", "<unk>")


class WordTokenizer:
  """Lower-cases, splits on whitespace, maps words to ids.

  Attributes:
    vocab_size: number of ids, the 3 special ones included.
    pad_id, eos_id, unk_id: 0, 1, 2.
  """

  pad_id = PAD_ID
  eos_id = EOS_ID
  unk_id = UNK_ID

  def __init__(self, words: Sequence[str]):
    words = list(words)
    if len(set(words)) != len(words):
      raise ValueError("WordTokenizer vocabulary has repeated words")
    for word in words:
      if not word or word != word.lower() or len(word.split()) != 1:
        raise ValueError(f"WordTokenizer vocabulary word {word!r} must be one "
                         "lower-case word without spaces")
    self._id_to_word = list(_SPECIAL) + words
    self._word_to_id = {word: index + len(_SPECIAL)
                        for index, word in enumerate(words)}
    self.vocab_size = len(self._id_to_word)

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids, int32 [n, max_len].

    Each text becomes its word ids, cut to `max_len - 1` words, then eos, then
    pad (0) to `max_len`; unknown words map to unk (2).
    """
    if max_len < 1:
      raise ValueError(f"max_len={max_len} leaves no room for eos; use >= 1")
    texts = np.asarray(texts, dtype=str).reshape(-1)
    # Captions repeat a lot; encode each distinct one once.
    distinct, inverse = np.unique(texts, return_inverse=True)
    tokens = np.zeros((len(distinct), max_len), dtype=np.int32)
    for row, text in enumerate(distinct.tolist()):
      ids = [self._word_to_id.get(word, UNK_ID)
             for word in text.lower().split()[:max_len - 1]]
      tokens[row, :len(ids)] = ids
      tokens[row, len(ids)] = EOS_ID
    return tokens[inverse.reshape(-1)]

  def decode(self, tokens) -> list[str]:
    """Texts from ids [n, length] (or [length]); stops at the first eos.

    Pads are skipped; unk decodes as "<unk>".
    """
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
      tokens = tokens[None]
    texts = []
    for row in tokens.tolist():
      words = []
      for token in row:
        if token == EOS_ID:
          break
        if token != PAD_ID:
          words.append(self._id_to_word[token])
      texts.append(" ".join(words))
    return texts


def corpus_tokenizer() -> WordTokenizer:
  """The built-in corpus's tokenizer (the same ids on every call)."""
  return WordTokenizer(corpus.vocabulary())


class SentencePieceTokenizer:
  """A SentencePiece model behind the `WordTokenizer` interface.

  Built from the model's serialized bytes, so it pickles (grain workers) and
  its `fingerprint` names exactly the model in use. Ids are the model's own;
  a model without a pad id pads with 0, one without eos appends nothing.

  Attributes:
    vocab_size: number of pieces, special ones included.
    pad_id, eos_id, unk_id: the model's special ids.
    fingerprint: short hex hash of the model bytes.
  """

  def __init__(self, model_proto: bytes, path: str = ""):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self.path = path  # The file it was loaded from ("" if none).
    self._model_proto = bytes(model_proto)
    self._processor = sentencepiece.SentencePieceProcessor(
        model_proto=self._model_proto)
    self.vocab_size = self._processor.get_piece_size()
    self.pad_id = max(self._processor.pad_id(), 0)
    self.eos_id = self._processor.eos_id()
    self.unk_id = self._processor.unk_id()
    self.fingerprint = hashlib.sha256(self._model_proto).hexdigest()[:16]

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    """Reads a `.model` file."""
    with open(path, "rb") as f:
      return cls(f.read(), os.path.abspath(path))

  def __getstate__(self):
    return self._model_proto, self.path

  def __setstate__(self, state):
    self.__init__(*state)

  @property
  def model_proto(self) -> bytes:
    return self._model_proto

  def encode_with_lengths(self, texts: Sequence[str], max_len: int):
    """Token ids and the untruncated lengths.

    Returns:
      `(tokens, lengths)`: int32 `[n, max_len]`, each text's pieces cut to
      leave room for eos, then eos (if the model has one), then pad; and
      int32 `[n]`, the number of ids each text needs (eos included), so
      `lengths > max_len` marks the texts that were cut.
    """
    if max_len < 1:
      raise ValueError(f"max_len={max_len} leaves no room for eos; use >= 1")
    texts = [str(text) for text in np.asarray(texts, dtype=object).reshape(-1)]
    ids = self._processor.encode(texts, num_threads=1)
    has_eos = self.eos_id >= 0
    room = max_len - int(has_eos)
    tokens = np.full((len(ids), max_len), self.pad_id, dtype=np.int32)
    lengths = np.empty(len(ids), dtype=np.int32)
    for row, pieces in enumerate(ids):
      kept = pieces[:room]
      tokens[row, :len(kept)] = kept
      if has_eos:
        tokens[row, len(kept)] = self.eos_id
      lengths[row] = len(pieces) + int(has_eos)
    return tokens, lengths

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids, int32 `[n, max_len]` (see `encode_with_lengths`)."""
    return self.encode_with_lengths(texts, max_len)[0]

  def decode(self, tokens) -> list[str]:
    """Texts from ids `[n, length]` (or `[length]`); stops at the first eos."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
      tokens = tokens[None]
    texts = []
    for row in tokens.tolist():
      if self.eos_id >= 0 and self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      texts.append(self._processor.decode(
          [token for token in row if token != self.pad_id]))
    return texts


def train_sentencepiece(texts: Sequence[str], path: str, *, vocab_size: int,
                        model_type: str = "unigram") -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` and writes it to `path`.

  Ids follow this package's convention (0 pad, 1 eos, 2 unk, no bos). The
  vocabulary is a soft limit: a small corpus yields fewer pieces rather than
  an error. Training is single-threaded on the texts in the given order, so
  the same texts give the same model. The file is written atomically.

  Args:
    texts: the training sentences.
    path: where the `.model` file goes.
    vocab_size: the most pieces, special ones included.
    model_type: "unigram", "bpe", "word" or "char".
  """
  import sentencepiece  # pylint: disable=g-import-not-at-top
  texts = [str(text) for text in texts if str(text).strip()]
  if not texts:
    raise ValueError("no non-empty text to train a SentencePiece model on")
  buffer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buffer,
      vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
      minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  os.replace(tmp, path)
  return SentencePieceTokenizer(buffer.getvalue(), os.path.abspath(path))


# ---------------------------------------------- one tokenizer per run --


def _workdir_path(workdir):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(workdir) / WORKDIR_FILE


def record_in_workdir(workdir, tokenizer):
  """Keeps a copy of `tokenizer` as `WORKDIR/tokenizer.model`.

  Raises:
    TokenizerMismatch: the workdir already holds another tokenizer (a resumed
      run whose data config changed).
  """
  path = _workdir_path(workdir)
  if path.exists():
    old = SentencePieceTokenizer(path.read_bytes(), os.fspath(path))
    if old.fingerprint != tokenizer.fingerprint:
      raise TokenizerMismatch(
          f"{workdir} was trained with tokenizer {path} (fingerprint "
          f"{old.fingerprint}), this run tokenizes with "
          f"{tokenizer.path or 'another model'} ({tokenizer.fingerprint}); "
          f"set config.data.tokenizer={path} or use a new workdir")
    return os.fspath(path)
  tmp = path.parent / f"{WORKDIR_FILE}.tmp{os.getpid()}"
  tmp.write_bytes(tokenizer.model_proto)
  tmp.rename(path)
  return os.fspath(path)


def workdir_tokenizer(workdir):
  """`WORKDIR/tokenizer.model` if the run recorded one, else ""."""
  path = _workdir_path(workdir) if workdir else None
  return os.fspath(path) if path is not None and path.exists() else ""


def manifest_entry(tokenizer):
  """What a reference cache's manifest records of the tokenizer its
  captions were embedded with: `{"fingerprint", "file"}`."""
  return {"fingerprint": tokenizer.fingerprint, "file": tokenizer.path}


def reference_tokenizer(config):
  """The tokenizer file a learner configured with `config.reference` uses
  when `config.data.tokenizer` is empty: the reference workdir's copy, else
  the file the cache's manifest names, else "" (the data's own)."""
  path = workdir_tokenizer(config.reference.get("workdir", ""))
  if path or not config.reference.get("cache_dir", ""):
    return path
  entry = _cache_entry(config.reference.cache_dir)
  if entry and entry.get("file") and os.path.exists(entry["file"]):
    return entry["file"]
  return ""


def _cache_entry(cache_dir):
  from jest_jax import reference_cache  # pylint: disable=g-import-not-at-top
  try:
    return reference_cache.read_manifest(cache_dir).get("tokenizer")
  except reference_cache.CacheError:
    return None


def check_cache_tokenizer(cache_dir, tokenizer):
  """Refuses a learner whose tokenizer is not its reference cache's.

  A cache built before manifests recorded tokenizers passes (its dataset
  fingerprint still covers the tokenizer).

  Raises:
    TokenizerMismatch: one line naming both files.
  """
  entry = _cache_entry(cache_dir)
  if not entry or entry.get("fingerprint") == tokenizer.fingerprint:
    return
  theirs = entry.get("file") or "an unrecorded file"
  raise TokenizerMismatch(
      f"this run tokenizes with {tokenizer.path or 'an in-memory model'} "
      f"(fingerprint {tokenizer.fingerprint}) but reference cache {cache_dir} "
      f"was embedded with {theirs} (fingerprint {entry.get('fingerprint')}); "
      f"set config.data.tokenizer={theirs}")


# ------------------------------------------------------------------ CLI --


def main(argv=None):
  """`--captions FILE` (repeat) `--output PATH.model`: one tokenizer
  trained on every file's captions, in the order given."""
  import argparse  # pylint: disable=g-import-not-at-top
  from jest_jax.data import convert_folder  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m jest_jax.data.tokenizer",
      description="Train one SentencePiece tokenizer on several captions "
      "files (JSONL or CSV, as convert_folder reads them).")
  parser.add_argument("--captions", action="append", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--vocab_size", type=int, default=256)
  parser.add_argument("--model_type", default="unigram",
                      choices=["unigram", "bpe", "word", "char"])
  args = parser.parse_args(argv)
  texts = []
  try:
    for path in args.captions:
      texts += [caption for _, _, caption, _ in
                convert_folder.read_captions(path)
                if isinstance(caption, str) and caption.strip()]
    model = train_sentencepiece(texts, args.output,
                                vocab_size=args.vocab_size,
                                model_type=args.model_type)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps({"output": args.output, "captions": len(texts),
                    "vocab_size": model.vocab_size,
                    "fingerprint": model.fingerprint}))


if __name__ == "__main__":
  main()
