"""Word-level tokenizer over a closed vocabulary (the built-in corpus's).

The interface is what a SentencePiece tokenizer can also offer: `vocab_size`,
`encode(texts, max_len) -> int32 [n, max_len]`, `decode(tokens) -> list[str]`.
Ids: 0 pad, 1 eos, 2 unk, then the words in the vocabulary's order.
"""

from collections.abc import Sequence

import numpy as np

from jest_jax.data import corpus

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
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
