"""Tests of the built-in procedural corpus and its word tokenizer.

Captions are checked by a small parser written here (words → objects), images
by their pixels and by a per-pixel painter written here, the slow twin of
`corpus._paint`.
"""

import collections
import dataclasses
import hashlib
import itertools

import numpy as np
import pytest

from jest_jax.data import builtin_tfds
from jest_jax.data import corpus
from jest_jax.data import corpus_v2
from jest_jax.data import tokenizer

CONFIG = corpus.CorpusConfig(seed=3, n_train=6000, n_curated=500,
                             n_retrieval=300, n_zeroshot=480)
PUBLIC_KEYS = {"image", "caption", "corrupt", "corruption", "label", "index"}
SIZE_OF_WORD = {"small": 0, "tiny": 0, "big": 1, "large": 1}
RELATION_OF_WORD = {"left": 0, "right": 1, "above": 2, "below": 3}
# Background pixels have a channel spread (max - min) of at most 40 (tints)
# + 28 (noise); object pixels, away from antialiased edges, at least 140
# (pink) - 24 (colour jitter) - 28 (noise) = 88.
OBJECT_SPREAD = 70


@pytest.fixture(scope="module")
def splits():
  return {split: corpus.make_split(CONFIG, split, with_metadata=True)
          for split in corpus.SPLITS}


def parse_objects(caption):
  """[(colour, shape, size or None)] in the order the caption names them."""
  objects, size, colour = [], None, None
  for word in caption.split():
    if word in SIZE_OF_WORD:
      size = SIZE_OF_WORD[word]
    elif word in corpus.COLOURS:
      colour = corpus.COLOURS.index(word)
    elif word in corpus.SHAPES:
      objects.append((colour, corpus.SHAPES.index(word), size))
      size, colour = None, None
  return objects


def parse_relation(caption):
  """Relation word's code (0 left, 1 right, 2 above, 3 below) or None."""
  found = [RELATION_OF_WORD[word] for word in caption.split()
           if word in RELATION_OF_WORD]
  assert len(found) <= 1, caption
  return found[0] if found else None


def scene_objects(records, row):
  """[(colour, shape, size, top, left)] of a record's objects, slot order."""
  return [tuple(int(records[key][row, slot]) for key in
                ("colour", "shape", "size", "top", "left"))
          for slot in range(int(records["n_objects"][row]))]


def relation_between(first, second, grid_cell):
  """The relation of object `first` to `second`, from their boxes.

  The dominant axis between the centres of their grid cells decides; ties go
  to the horizontal axis.
  """
  def centre(item):
    span = item[2] + 1
    # Boxes start 0..2 px into their first cell (1 px margin, ±1 px jitter).
    return item[3] // grid_cell + span / 2, item[4] // grid_cell + span / 2
  (row_a, col_a), (row_b, col_b) = centre(first), centre(second)
  if abs(col_a - col_b) >= abs(row_a - row_b):
    return 0 if col_a < col_b else 1
  return 2 if row_a < row_b else 3


def naming_orders(named, objects):
  """Every assignment of named objects to scene objects (scene orders)."""
  return [order for order in itertools.permutations(range(len(objects)))
          if len(order) == len(named) and all(
              name[0] == objects[slot][0] and name[1] == objects[slot][1]
              and name[2] in (None, objects[slot][2])
              for name, slot in zip(named, order))]


def caption_is_true(caption, objects, grid_cell):
  """Whether a caption names exactly these objects (and their relation).

  Two alike objects can be named either way round; one reading suffices.
  """
  relation = parse_relation(caption)
  for order in naming_orders(parse_objects(caption), objects):
    if relation is None or relation == relation_between(
        objects[order[0]], objects[order[1]], grid_cell):
      return True
  return False


def spread(images):
  """Channel spread (max - min), int [..., H, W]: saturation, roughly."""
  images = images.astype(np.int32)
  return images.max(axis=-1) - images.min(axis=-1)


# ---------------------------------------------------------------------------
# Shapes, types, determinism.


def test_make_split_returns_the_public_keys_shapes_and_dtypes():
  config = corpus.CorpusConfig(n_zeroshot=50)
  records = corpus.make_split(config, "zeroshot")
  assert set(records) == PUBLIC_KEYS
  assert records["image"].shape == (50, 32, 32, 3)
  assert records["image"].dtype == np.uint8
  assert records["caption"].shape == (50,)
  assert records["caption"].dtype.kind == "U"
  assert records["corrupt"].dtype == np.bool_
  assert records["corruption"].dtype == np.int8
  assert records["label"].dtype == np.int32
  np.testing.assert_array_equal(records["index"], np.arange(50))
  assert records["index"].dtype == np.int64


def test_empty_split_keeps_shapes_and_dtypes():
  records = corpus.make_split(corpus.CorpusConfig(n_retrieval=0), "retrieval")
  assert records["image"].shape == (0, 32, 32, 3)
  assert records["image"].dtype == np.uint8
  assert records["label"].dtype == np.int32


def test_split_sizes_follow_the_config(splits):
  for split, size in (("train", CONFIG.n_train),
                      ("curated", CONFIG.n_curated),
                      ("retrieval", CONFIG.n_retrieval),
                      ("zeroshot", CONFIG.n_zeroshot)):
    for key in PUBLIC_KEYS:
      assert len(splits[split][key]) == size, (split, key)


def test_same_config_gives_bit_identical_arrays(splits):
  again = corpus.make_split(CONFIG, "train")
  for key in PUBLIC_KEYS:
    np.testing.assert_array_equal(again[key], splits["train"][key])


def test_another_seed_gives_other_images_and_captions(splits):
  other = corpus.make_split(
      corpus.CorpusConfig(seed=CONFIG.seed + 1, n_zeroshot=CONFIG.n_zeroshot),
      "zeroshot")
  assert np.mean(other["image"] != splits["zeroshot"]["image"]) > 0.9
  assert np.mean(other["caption"] != splits["zeroshot"]["caption"]) > 0.5


def test_splits_use_independent_streams(splits):
  # Same seed, different splits: nothing in common.
  first = splits["train"]["image"][:300]
  assert np.mean(splits["curated"]["image"][:300] != first) > 0.9


def test_split_is_a_prefix_of_a_larger_one_and_ignores_other_sizes():
  # 4100 crosses the first block's end (4096 records).
  small = corpus.CorpusConfig(seed=5, n_train=4100, n_curated=900)
  large = corpus.CorpusConfig(seed=5, n_train=4300, n_curated=100)
  train_small = corpus.make_split(small, "train")
  train_large = corpus.make_split(large, "train")
  for key in PUBLIC_KEYS:
    np.testing.assert_array_equal(train_small[key], train_large[key][:4100])
  curated_small = corpus.make_split(small, "curated")
  curated_large = corpus.make_split(large, "curated")
  np.testing.assert_array_equal(curated_large["image"],
                                curated_small["image"][:100])


def test_fingerprint_is_stable_short_hex_and_tracks_what_changes_a_split():
  config = corpus.CorpusConfig()
  fingerprint = corpus.fingerprint(config, "train")
  assert fingerprint == corpus.fingerprint(corpus.CorpusConfig(), "train")
  assert len(fingerprint) == 16
  int(fingerprint, 16)
  changed = [
      corpus.fingerprint(config, "curated"),
      corpus.fingerprint(corpus.CorpusConfig(seed=1), "train"),
      corpus.fingerprint(corpus.CorpusConfig(n_train=10), "train"),
      corpus.fingerprint(corpus.CorpusConfig(noise_rate=0.2), "train"),
      corpus.fingerprint(corpus.CorpusConfig(noise_mix=(0.5, 0.5, 0.0)),
                         "train"),
  ]
  assert fingerprint not in changed
  assert len(set(changed)) == len(changed)
  # Other splits' sizes and the train noise do not touch these splits.
  assert fingerprint == corpus.fingerprint(
      corpus.CorpusConfig(n_curated=7), "train")
  assert corpus.fingerprint(config, "zeroshot") == corpus.fingerprint(
      corpus.CorpusConfig(noise_rate=0.1, n_train=3), "zeroshot")


@pytest.mark.parametrize("field, value, message", [
    ("noise_mix", (0.5, 0.2, 0.2), "noise_mix"),
    ("noise_rate", 1.5, "noise_rate"),
    ("image_size", 36, "multiple of grid_cell"),
    ("image_size", 24, "4 grid"),
    ("max_tokens", 8, "max_tokens"),
])
def test_bad_config_stops_with_a_message_naming_the_field(field, value,
                                                          message):
  config = corpus.CorpusConfig(**{field: value})
  with pytest.raises(ValueError, match=message):
    corpus.make_split(config, "zeroshot")


def test_unknown_split_stops_with_the_known_ones():
  with pytest.raises(ValueError, match="curated"):
    corpus.make_split(CONFIG, "validation")


# ---------------------------------------------------------------------------
# Noise.


@pytest.mark.parametrize("noise_rate, noise_mix", [
    (0.5, (1 / 3, 1 / 3, 1 / 3)), (0.2, (0.6, 0.4, 0.0))])
def test_train_noise_rate_and_mix_match_the_config(noise_rate, noise_mix):
  config = corpus.CorpusConfig(seed=1, n_train=8192, noise_rate=noise_rate,
                               noise_mix=noise_mix)
  records = corpus.make_split(config, "train")
  assert abs(records["corrupt"].mean() - noise_rate) < 1e-3
  np.testing.assert_array_equal(records["corrupt"], records["corruption"] > 0)
  counts = np.bincount(records["corruption"], minlength=4)
  shares = counts[1:] / counts[1:].sum()
  np.testing.assert_allclose(shares, noise_mix, atol=1e-3)


def test_clean_train_pairs_are_true_of_their_images(splits):
  train = splits["train"]
  for row in np.flatnonzero(train["corruption"] == corpus.CLEAN):
    assert train["caption"][row] == train["clean_caption"][row]
  for row in range(len(train["caption"])):
    assert caption_is_true(train["clean_caption"][row],
                           scene_objects(train, row), CONFIG.grid_cell), row


def test_mismatch_captions_belong_to_another_image_of_other_classes(splits):
  train = splits["train"]
  rows = np.flatnonzero(train["corruption"] == corpus.MISMATCH)
  assert len(rows) > 500
  for row in rows:
    source = train["source"][row]
    assert source != row
    if source < len(train["caption"]):
      assert train["caption"][row] == train["clean_caption"][source]
      assert caption_is_true(train["caption"][row],
                             scene_objects(train, source), CONFIG.grid_cell)
    named = {(colour, shape)
             for colour, shape, _ in parse_objects(train["caption"][row])}
    actual = {item[:2] for item in scene_objects(train, row)}
    assert named != actual, row
  assert np.all(train["source"][train["corruption"] != corpus.MISMATCH] == -1)


def test_uninformative_captions_name_no_attribute(splits):
  train = splits["train"]
  attribute_words = (set(corpus.COLOURS) | set(corpus.SHAPES)
                     | set(SIZE_OF_WORD) | set(RELATION_OF_WORD))
  rows = np.flatnonzero(train["corruption"] == corpus.UNINFORMATIVE)
  assert len(rows) > 500
  for row in rows:
    assert not set(train["caption"][row].split()) & attribute_words
  assert len(set(train["caption"][rows].tolist())) > 100


def test_attribute_corruption_changes_exactly_one_attribute(splits):
  train = splits["train"]
  rows = np.flatnonzero(train["corruption"] == corpus.ATTRIBUTE)
  assert len(rows) > 500
  changed_kinds = collections.Counter()
  for row in rows:
    wrong = parse_objects(train["caption"][row])
    right = parse_objects(train["clean_caption"][row])
    assert len(wrong) == len(right)
    differences = [(index, field)
                   for index, (a, b) in enumerate(zip(wrong, right))
                   for field in range(3) if a[field] != b[field]]
    assert len(differences) == 1, (train["caption"][row],
                                   train["clean_caption"][row])
    assert differences[0][1] == train["swapped"][row]
    assert parse_relation(train["caption"][row]) == parse_relation(
        train["clean_caption"][row])
    assert not caption_is_true(train["caption"][row],
                               scene_objects(train, row), CONFIG.grid_cell)
    changed_kinds[differences[0][1]] += 1
  assert set(changed_kinds) == {0, 1, 2}


@pytest.mark.parametrize("split", ["curated", "retrieval", "zeroshot"])
def test_evaluation_and_reference_splits_are_clean(splits, split):
  records = splits[split]
  assert not records["corrupt"].any()
  assert np.all(records["corruption"] == corpus.CLEAN)
  np.testing.assert_array_equal(records["caption"], records["clean_caption"])
  for row in range(len(records["caption"])):
    assert caption_is_true(records["caption"][row],
                           scene_objects(records, row), CONFIG.grid_cell)


def test_retrieval_pairs_have_two_objects_and_captions_naming_all(splits):
  retrieval = splits["retrieval"]
  assert np.all(retrieval["n_objects"] == 2)
  assert len(set(retrieval["caption"].tolist())) == len(retrieval["caption"])
  descriptions = set()
  for caption in retrieval["caption"]:
    named = parse_objects(caption)
    assert len(named) == 2 and all(size is not None for *_, size in named)
    relation = parse_relation(caption)
    assert relation is not None
    # "A left of B" says what "B right of A" says.
    canonical = min((named[0], relation, named[1]),
                    (named[1], relation ^ 1, named[0]))
    descriptions.add(canonical)
  assert len(descriptions) == len(retrieval["caption"])


def test_train_has_one_and_two_object_images_and_all_relations(splits):
  train = splits["train"]
  assert 0.45 < np.mean(train["n_objects"] == 1) < 0.55
  relations = {parse_relation(caption) for caption in train["clean_caption"]}
  assert relations == {None, 0, 1, 2, 3}


# ---------------------------------------------------------------------------
# Images.


def test_labels_are_the_first_objects_class(splits):
  for records in splits.values():
    np.testing.assert_array_equal(
        records["label"],
        records["colour"][:, 0] * len(corpus.SHAPES) + records["shape"][:, 0])


def test_zeroshot_labels_are_balanced_single_objects(splits):
  zeroshot = splits["zeroshot"]
  assert np.all(zeroshot["n_objects"] == 1)
  np.testing.assert_array_equal(zeroshot["label"],
                                np.arange(CONFIG.n_zeroshot) % 48)


def test_zeroshot_dominant_colour_is_the_labels_colour(splits):
  # The 4 most vivid pixels: interior ones, not edges mixed with background
  # (a small star or ring has few pixels fully inside).
  zeroshot = splits["zeroshot"]
  for image, label in zip(zeroshot["image"], zeroshot["label"]):
    assert np.sum(spread(image) > OBJECT_SPREAD) >= 6
    most_vivid = np.argsort(-spread(image).ravel(), kind="stable")[:4]
    colour = image.reshape(-1, 3)[most_vivid].mean(axis=0)
    distances = np.linalg.norm(colour - corpus.PALETTE, axis=1)
    assert np.argmin(distances) == label // len(corpus.SHAPES)


def test_zeroshot_drawn_shape_matches_the_labels_shape(splits):
  # Match each object's vivid-pixel map against every shape's mask.
  zeroshot = splits["zeroshot"]
  masks = corpus._shape_masks(CONFIG.grid_cell)
  for row, image in enumerate(zeroshot["image"]):
    size = zeroshot["size"][row, 0]
    top, left = zeroshot["top"][row, 0], zeroshot["left"][row, 0]
    side = masks[size].shape[-1]
    box = spread(image[top:top + side, left:left + side]) / 255.0
    errors = [np.abs(box / box.max() - mask).sum() for mask in masks[size]]
    assert np.argmin(errors) == zeroshot["label"][row] % len(corpus.SHAPES)


def test_objects_sit_on_the_grid_within_one_px(splits):
  cell = CONFIG.grid_cell
  for records in splits.values():
    present = records["colour"] >= 0
    for key in ("top", "left"):
      offset = records[key][present] % cell
      # 1 px margin, ±1 px jitter.
      assert set(offset.tolist()) == {0, 1, 2}
      span = records["size"][present] + 1
      side = span * cell - 2
      start_cell = records[key][present] // cell
      assert np.all(records[key][present] + side
                    <= (start_cell + span) * cell)
      assert np.all(records[key][present] >= 0)
      assert np.all(records[key][present] + side <= CONFIG.image_size)


def test_vivid_pixels_lie_inside_the_objects_boxes(splits):
  for records in (splits["zeroshot"], splits["curated"]):
    for row, image in enumerate(records["image"]):
      inside = np.zeros(image.shape[:2], dtype=bool)
      for _, _, size, top, left in scene_objects(records, row):
        side = (size + 1) * CONFIG.grid_cell - 2
        inside[top:top + side, left:left + side] = True
      assert not np.any((spread(image) > OBJECT_SPREAD) & ~inside), row


def test_two_objects_never_share_a_grid_cell(splits):
  train = splits["train"]
  for row in np.flatnonzero(train["n_objects"] == 2):
    cells = []
    for _, _, size, top, left in scene_objects(train, row):
      span = size + 1
      first_row, first_col = top // CONFIG.grid_cell, left // CONFIG.grid_cell
      cells.append({(first_row + r, first_col + c)
                    for r in range(span) for c in range(span)})
    assert not cells[0] & cells[1]


def paint_slowly(scene, params, grid_cell):
  """Per-pixel twin of `corpus._paint` (float64, Python loops)."""
  n, side = params["noise"].shape[:2]
  images = np.zeros((n, side, side, 3), dtype=np.uint8)
  n_sub = 8
  for i in range(n):
    cos, sin = np.cos(params["angle"][i]), np.sin(params["angle"][i])
    for y in range(side):
      for x in range(side):
        u, v = (x + 0.5) / side - 0.5, (y + 0.5) / side - 0.5
        along = 0.5 + (cos * u + sin * v) / np.sqrt(2.0)
        pixel = (params["start"][i].astype(np.float64)
                 + params["delta"][i] * along)
        for slot in range(scene["n_objects"][i]):
          mask_side = (scene["size"][i, slot] + 1) * grid_cell - 2
          my, mx = y - scene["top"][i, slot], x - scene["left"][i, slot]
          if not (0 <= my < mask_side and 0 <= mx < mask_side):
            continue
          # Coverage of this pixel: share of 8×8 sub-pixel centres inside.
          sub = (np.arange(n_sub) + 0.5) / n_sub
          sub_u, sub_v = np.meshgrid((mx + sub) / mask_side * 2 - 1,
                                     (my + sub) / mask_side * 2 - 1)
          alpha = corpus._shape_inside(
              corpus.SHAPES[scene["shape"][i, slot]], sub_u, sub_v).mean()
          colour = (corpus.PALETTE[scene["colour"][i, slot]]
                    + params["colour_jitter"][i, slot])
          pixel = pixel * (1 - alpha) + colour * alpha
        pixel = (pixel + params["noise"][i, y, x] * corpus._PIXEL_NOISE / 127.5
                 - corpus._PIXEL_NOISE)
        images[i, y, x] = np.floor(np.clip(pixel, 0, 255) + 0.5)
  return images


def test_fast_painter_matches_the_per_pixel_twin():
  rng = np.random.default_rng(0)
  n = 6
  scene = corpus._draw_scenes(rng, n, CONFIG,
                              np.array([1, 2, 2, 1, 2, 2], np.int8))
  params = corpus._draw_paint_params(rng, n, CONFIG.image_size)
  fast = corpus._paint(scene, params, corpus._shape_masks(CONFIG.grid_cell))
  slow = paint_slowly(scene, params, CONFIG.grid_cell)
  difference = np.abs(fast.astype(np.int32) - slow)
  # float32 against float64: a rounding may flip at .5.
  assert difference.max() <= 1
  assert np.mean(difference == 0) > 0.99


def test_larger_images_snap_to_their_own_grid():
  config = corpus.CorpusConfig(image_size=64, grid_cell=16, n_zeroshot=100)
  records = corpus.make_split(config, "zeroshot", with_metadata=True)
  assert records["image"].shape == (100, 64, 64, 3)
  assert set((records["top"][:, 0] % 16).tolist()) == {0, 1, 2}
  for row, image in enumerate(records["image"]):
    _, _, size, top, left = scene_objects(records, row)[0]
    side = (size + 1) * 16 - 2
    inside = np.zeros(image.shape[:2], dtype=bool)
    inside[top:top + side, left:left + side] = True
    vivid = spread(image) > OBJECT_SPREAD
    assert vivid.sum() >= 30 and not np.any(vivid & ~inside)


# ---------------------------------------------------------------------------
# Zero-shot names, prompts, tokenizer.


def test_class_names_follow_the_label_formula():
  names = corpus.class_names()
  assert len(names) == len(set(names)) == 48
  assert names[3 * 6 + 2] == f"{corpus.COLOURS[3]} {corpus.SHAPES[2]}"


def test_prompt_templates_have_one_slot_and_stay_in_vocabulary():
  tokenizer_ = tokenizer.corpus_tokenizer()
  templates = corpus.prompt_templates()
  assert len(templates) >= 4
  prompts = []
  for template in templates:
    assert template.count("{}") == 1
    prompts += [template.format(name) for name in corpus.class_names()]
  tokens = tokenizer_.encode(prompts, CONFIG.max_tokens)
  assert not np.any(tokens == tokenizer.UNK_ID)


def test_every_caption_fits_max_tokens_without_unk(splits):
  tokenizer_ = tokenizer.corpus_tokenizer()
  for records in splits.values():
    tokens = tokenizer_.encode(records["caption"], CONFIG.max_tokens)
    assert tokens.shape == (len(records["caption"]), CONFIG.max_tokens)
    assert tokens.dtype == np.int32
    assert not np.any(tokens == tokenizer.UNK_ID)
    # The eos survived truncation: the caption was not cut.
    assert np.all(np.sum(tokens == tokenizer.EOS_ID, axis=1) == 1)
    lengths = np.array([len(text.split()) for text in records["caption"]])
    assert lengths.max() <= corpus.MAX_CAPTION_WORDS


def test_longest_possible_caption_fits_max_caption_words():
  # From the grammar: an object with article and size is 4 words, without
  # article 3, the longest relation 4 ("to the left of").
  placeholder_words = {"{A}": 4, "{B}": 4, "{a}": 3, "{b}": 3, "{rel}": 4}
  longest = 0
  for template in (corpus._ONE_OBJECT_TEMPLATES + corpus._TWO_OBJECT_TEMPLATES
                   + corpus._RETRIEVAL_TEMPLATES):
    longest = max(longest, sum(placeholder_words.get(word, 1)
                               for word in template.split()))
  assert longest == corpus.MAX_CAPTION_WORDS
  assert corpus.CorpusConfig().max_tokens >= longest + 1


def test_tokenizer_round_trips_every_caption(splits):
  tokenizer_ = tokenizer.corpus_tokenizer()
  for records in splits.values():
    tokens = tokenizer_.encode(records["caption"], CONFIG.max_tokens)
    assert tokenizer_.decode(tokens) == records["caption"].tolist()


def test_tokenizer_vocabulary_is_small_closed_and_deterministic(splits):
  words = corpus.vocabulary()
  assert 40 <= len(words) <= 70
  tokenizer_ = tokenizer.corpus_tokenizer()
  assert tokenizer_.vocab_size == len(words) + 3
  used = set()
  for records in splits.values():
    for caption in records["caption"]:
      used.update(caption.split())
  assert used <= set(words)
  texts = splits["train"]["caption"][:50]
  np.testing.assert_array_equal(
      tokenizer_.encode(texts, 16),
      tokenizer.corpus_tokenizer().encode(texts, 16))


def encode_slowly(words, texts, max_len):
  """Obvious twin of `WordTokenizer.encode`: one text at a time."""
  ids = {word: index + 3 for index, word in enumerate(words)}
  tokens = np.zeros((len(texts), max_len), dtype=np.int32)
  for row, text in enumerate(texts):
    row_ids = [ids.get(word, 2) for word in text.lower().split()]
    row_ids = row_ids[:max_len - 1] + [1]
    tokens[row, :len(row_ids)] = row_ids
  return tokens


def test_tokenizer_encode_matches_its_slow_twin_with_unk_and_truncation():
  words = ["red", "circle", "a", "big"]
  tokenizer_ = tokenizer.WordTokenizer(words)
  texts = ["a big red circle", "a RED  blob", "", "red red red red red red",
           "a big red circle"]
  for max_len in (1, 3, 8):
    np.testing.assert_array_equal(tokenizer_.encode(texts, max_len),
                                  encode_slowly(words, texts, max_len))
  tokens = tokenizer_.encode(texts, 4)
  assert tokenizer_.decode(tokens) == [
      "a big red", "a red <unk>", "", "red red red", "a big red"]
  assert tokenizer_.decode(tokens[0]) == ["a big red"]


def test_tokenizer_rejects_repeated_or_spaced_words_and_no_room_for_eos():
  with pytest.raises(ValueError, match="repeated"):
    tokenizer.WordTokenizer(["red", "red"])
  with pytest.raises(ValueError, match="one lower-case word"):
    tokenizer.WordTokenizer(["red circle"])
  with pytest.raises(ValueError, match="eos"):
    tokenizer.WordTokenizer(["red"]).encode(["red"], 0)


# ---------------------------------------------------------------------------
# Version 1 is a preset that does not move.

# Recorded from the generator before version 2 existed (commit 47eb70c):
# SHA-256 prefixes of every array of every split (metadata included), the
# default config's fingerprints and data key, and the tokenizer's texts.
V1_CONFIG = corpus.CorpusConfig(seed=7, n_train=5000, n_curated=300,
                                n_retrieval=200, n_zeroshot=100)
V1_DIGESTS = {"train": "754c0ed9e2f7526c", "curated": "f2141bc104e95a05",
              "retrieval": "859326009a47fe37", "zeroshot": "74c8c7d37a6ff8ed"}
V1_FINGERPRINTS = {"train": "4a13ae3852fb997e", "curated": "8384b6c184a5ee6a",
                   "retrieval": "81c6b4e2e2d0b44e",
                   "zeroshot": "86e712baaa84fb29"}
V1_DATA_KEY = "f83b342873645714"
V1_TOKENIZER_TEXTS = "113ccbf93b8fc08a"


def digest(records):
  """Short SHA-256 of every array's key, dtype, shape and bytes."""
  hasher = hashlib.sha256()
  for key in sorted(records):
    array = np.ascontiguousarray(records[key])
    hasher.update(key.encode())
    hasher.update(str(array.dtype).encode())
    hasher.update(str(array.shape).encode())
    hasher.update(array.tobytes())
  return hasher.hexdigest()[:16]


@pytest.mark.parametrize("split", corpus.SPLITS)
def test_version_1_preset_gives_the_recorded_bytes_and_fingerprints(split):
  for config in (V1_CONFIG, dataclasses.replace(V1_CONFIG, version=1)):
    records = corpus.make_split(config, split, with_metadata=True)
    assert digest(records) == V1_DIGESTS[split]
  assert corpus.fingerprint(corpus.CorpusConfig(), split) == (
      V1_FINGERPRINTS[split])


def test_version_1_data_key_tokenizer_and_names_are_the_recorded_ones():
  assert corpus.CorpusConfig().version == 1
  assert builtin_tfds.config_key(corpus.CorpusConfig()) == V1_DATA_KEY
  texts = "\n".join(builtin_tfds._tokenizer_texts())
  assert hashlib.sha256(texts.encode()).hexdigest()[:16] == (
      V1_TOKENIZER_TEXTS)
  assert corpus.class_names() == corpus.class_names(corpus.CorpusConfig())
  assert len(corpus.class_names()) == 48


# ---------------------------------------------------------------------------
# Version 2: the web-like corpus.

V2 = corpus.CorpusConfig(version=2, seed=4, n_train=16384, n_curated=3000,
                         n_retrieval=400, n_zeroshot=192)
COUNT_OF_WORD = {"two": 2, "three": 3}
PLURALS = ("circles", "squares", "triangles", "stars", "crosses", "rings")


@pytest.fixture(scope="module")
def v2_splits():
  return {split: corpus.make_split(V2, split, with_metadata=True)
          for split in corpus.SPLITS}


def parse_v2(caption):
  """([(colour, shape, size or None, count)], relation or None)."""
  objects, size, colour, count = [], None, None, 1
  for word in caption.split():
    if word in SIZE_OF_WORD:
      size = SIZE_OF_WORD[word]
    elif word in COUNT_OF_WORD:
      count = COUNT_OF_WORD[word]
    elif word in corpus.COLOURS:
      colour = corpus.COLOURS.index(word)
    elif word in corpus.SHAPES or word in PLURALS:
      shape = (corpus.SHAPES.index(word) if word in corpus.SHAPES
               else PLURALS.index(word))
      objects.append((colour, shape, size, count))
      size, colour, count = None, None, 1
  return objects, parse_relation(caption)


def v2_caption_is_true(caption, records, row, grid_cell):
  """Whether a version-2 caption says what the record's scene holds."""
  named, relation = parse_v2(caption)
  objects = scene_objects(records, row)
  if records["scene_type"][row] != corpus_v2.PAIR:
    if len(named) != 1 or relation is not None:
      return False
    colour, shape, size, count = named[0]
    return count == len(objects) and all(
        (colour, shape) == item[:2] and size in (None, item[2])
        for item in objects)
  if any(count != 1 for *_, count in named):
    return False
  return caption_is_true(caption, objects, grid_cell)


def caption_difference(caption, other):
  """The (attribute code) of each difference between two captions' content
  (`corpus_v2.ATTRIBUTE_NAMES`), or None if their structure differs."""
  (objects, relation), (other_objects, other_relation) = (parse_v2(caption),
                                                          parse_v2(other))
  if len(objects) != len(other_objects):
    return None
  differences = [field for a, b in zip(objects, other_objects)
                 for field in range(4) if a[field] != b[field]]
  if relation != other_relation:
    differences.append(corpus_v2.RELATION)
  return differences


def template_words(caption):
  """A caption's words that name no attribute, count or relation."""
  named = (set(SIZE_OF_WORD) | set(COUNT_OF_WORD) | set(corpus.COLOURS)
           | set(corpus.SHAPES) | set(PLURALS)
           | {"a", "an", "to", "the", "of", "left", "right", "above", "below"})
  return [word for word in caption.split() if word not in named]


def chi2_upper(df, z=4.0):
  """Wilson–Hilferty: the chi-square quantile z standard deviations up."""
  return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def test_v2_scene_mix_and_noise_follow_the_config(v2_splits):
  train = v2_splits["train"]
  n = len(train["caption"])
  shares = np.bincount(train["scene_type"], minlength=3) / n
  # Four binomial standard deviations.
  tolerance = 4 * np.sqrt(0.25 / n)
  np.testing.assert_allclose(shares, V2.scene_mix, atol=tolerance)
  groups = train["scene_type"] == corpus_v2.GROUP
  assert set(train["count"][groups].tolist()) == {2, 3}
  assert np.all(train["count"][~groups] == 1)
  assert abs(train["corrupt"].mean() - V2.noise_rate) < 1e-3


@pytest.mark.parametrize("exponent, duplicate_rate", [(1.0, 0.3), (0.5, 0.0),
                                                      (2.0, 0.0)])
def test_v2_concept_frequencies_follow_the_configured_zipf_law(
    exponent, duplicate_rate):
  config = dataclasses.replace(V2, zipf_exponent=exponent, n_train=16384,
                               duplicate_rate=duplicate_rate)
  train = corpus.make_split(config, "train", with_metadata=True)
  probabilities = corpus_v2.concept_probabilities(config)
  ranks = corpus_v2.concept_ranks()
  np.testing.assert_allclose(probabilities[np.argsort(ranks)],
                             np.arange(1, 97.0) ** -exponent
                             / np.sum(np.arange(1, 97.0) ** -exponent))
  # Originals are independent draws of the first object's concept: a
  # goodness-of-fit test against the law (duplicates repeat their source,
  # which correlates counts, so they are left out of this part).
  original = train["duplicate_of"] < 0
  counts = np.bincount(train["concept"][original], minlength=96)
  expected = probabilities * original.sum()
  statistic = np.sum((counts - expected) ** 2 / expected)
  assert statistic < chi2_upper(95), statistic
  # With duplicates, the rank–frequency slope on log-log axes is still
  # -exponent: fitted over the ranks with 100+ expected records, within a
  # tolerance from the sample size (Poisson error of the log count).
  all_counts = np.bincount(train["concept"], minlength=96)[np.argsort(ranks)]
  expected_all = probabilities[np.argsort(ranks)] * len(train["concept"])
  fitted = expected_all >= 100
  log_rank = np.log(np.arange(1, 97.0))[fitted]
  slope = np.polyfit(log_rank, np.log(all_counts[fitted]), 1)[0]
  spread_of_log = 1 / np.sqrt(expected_all[fitted])
  slope_error = np.sqrt(np.sum(spread_of_log ** 2)
                        / np.sum((log_rank - log_rank.mean()) ** 2))
  assert abs(slope + exponent) < 4 * slope_error * (1 + 3 * duplicate_rate)


def test_v2_head_concepts_are_abundant_and_tail_ones_rare(v2_splits):
  ranks = corpus_v2.concept_ranks()
  rank = ranks[v2_splits["train"]["concept"]]
  assert np.mean(rank < 10) > 0.45
  assert 0 < np.mean(rank >= 48) < 0.2
  # The second object of a pair follows the same tail.
  pairs = v2_splits["train"]["scene_type"] == corpus_v2.PAIR
  second = corpus_v2.concept_of(*(v2_splits["train"][key][pairs, 1]
                                  .astype(np.int64)
                                  for key in ("colour", "shape", "size")))
  assert np.mean(ranks[second] < 10) > 0.35


@pytest.mark.parametrize("duplicate_rate, paraphrase", [(0.3, 0.5),
                                                        (0.1, 0.0)])
def test_v2_near_duplicate_share_and_what_a_duplicate_keeps(
    v2_splits, duplicate_rate, paraphrase):
  if (duplicate_rate, paraphrase) == (V2.duplicate_rate,
                                      V2.duplicate_paraphrase):
    train = v2_splits["train"]
  else:
    train = corpus.make_split(dataclasses.replace(
        V2, n_train=8192, duplicate_rate=duplicate_rate,
        duplicate_paraphrase=paraphrase), "train", with_metadata=True)
  copies = np.flatnonzero(train["duplicate_of"] >= 0)
  # Exact counts per 4096-record block.
  assert len(copies) == round(duplicate_rate * 4096) * (
      len(train["caption"]) // 4096)
  sources = train["duplicate_of"][copies]
  assert np.all(train["duplicate_of"][sources] == -1)
  assert np.all(sources // 4096 == copies // 4096)
  for key in ("concept", "scene_type", "count", "colour", "shape", "size"):
    np.testing.assert_array_equal(train[key][copies], train[key][sources])
  cell = V2.grid_cell
  present = train["colour"][copies] >= 0
  for key in ("top", "left"):
    np.testing.assert_array_equal(
        (train[key][copies] // cell)[present],
        (train[key][sources] // cell)[present])
  # Re-rendered, not copied: close in pixels, but not equal.
  difference = np.abs(train["image"][copies].astype(np.int32)
                      - train["image"][sources])
  unrelated = np.abs(train["image"][copies].astype(np.int32)
                     - train["image"][(copies + 1) % len(copies)])
  assert np.all(difference.reshape(len(copies), -1).max(axis=1) > 0)
  assert difference.mean() < 0.5 * unrelated.mean()
  reworded = train["paraphrased"][copies]
  assert abs(reworded.mean() - paraphrase) < 2 / len(copies) * 4
  np.testing.assert_array_equal(
      train["clean_caption"][copies[~reworded]],
      train["clean_caption"][sources[~reworded]])
  for row in copies[reworded][:300]:
    assert v2_caption_is_true(train["clean_caption"][row], train, row, cell)
  assert not np.any(train["paraphrased"][train["duplicate_of"] < 0])


def test_v2_clean_captions_are_true_and_noise_changes_one_attribute(
    v2_splits):
  train = v2_splits["train"]
  for row in range(3000):
    assert v2_caption_is_true(train["clean_caption"][row], train, row,
                              V2.grid_cell), train["clean_caption"][row]
  attribute = np.flatnonzero(train["corruption"] == corpus.ATTRIBUTE)
  kinds = collections.Counter()
  for row in attribute[:2000]:
    caption, clean = train["caption"][row], train["clean_caption"][row]
    assert caption_difference(caption, clean) == [train["swapped"][row]], (
        caption, clean)
    assert not v2_caption_is_true(caption, train, row, V2.grid_cell)
    kinds[int(train["swapped"][row])] += 1
  assert set(kinds) == set(range(5))
  # Verbs agree with counts, also where noise changed the count.
  for caption in train["caption"]:
    objects, _ = parse_v2(caption)
    if caption.startswith(("there is", "this is")):
      assert objects[0][3] == 1, caption
    if caption.startswith(("there are", "these are")):
      assert objects[0][3] > 1, caption
  for row in np.flatnonzero(train["corruption"] == corpus.MISMATCH)[:1000]:
    assert not v2_caption_is_true(train["caption"][row], train, row,
                                  V2.grid_cell)


def test_v2_curated_split_misses_the_configured_concepts_and_is_balanced(
    v2_splits):
  curated, train = v2_splits["curated"], v2_splits["train"]
  missing = corpus_v2.missing_concepts(V2)
  assert len(missing) == round(V2.curated_missing * 96) == 24
  present = curated["colour"] >= 0
  concepts = corpus_v2.concept_of(*(curated[key].astype(np.int64)
                                    for key in ("colour", "shape", "size")))
  assert not set(concepts[present].tolist()) & set(missing.tolist())
  assert set(concepts[present].tolist()) == set(range(96)) - set(
      missing.tolist())
  # The pool holds them, head concepts among them.
  assert set(missing.tolist()) <= set(train["concept"].tolist())
  counts = np.bincount(curated["concept"], minlength=96)
  kept = np.setdiff1d(np.arange(96), missing)
  assert counts[kept].max() - counts[kept].min() <= 1
  assert not curated["corrupt"].any()
  assert np.all(curated["duplicate_of"] == -1)
  np.testing.assert_array_equal(curated["caption"], curated["clean_caption"])


def test_v2_curated_split_can_follow_the_pool_or_miss_nothing():
  pool_like = dataclasses.replace(V2, curated_balance="pool",
                                  curated_missing=0.5, n_curated=8192)
  curated = corpus.make_split(pool_like, "curated", with_metadata=True)
  missing = corpus_v2.missing_concepts(pool_like)
  assert set(corpus_v2.missing_concepts(V2).tolist()) <= set(missing.tolist())
  kept = np.setdiff1d(np.arange(96), missing)
  probabilities = corpus_v2.concept_probabilities(pool_like)[kept]
  expected = probabilities / probabilities.sum() * len(curated["concept"])
  counts = np.bincount(curated["concept"], minlength=96)
  assert counts[missing].sum() == 0
  statistic = np.sum((counts[kept] - expected) ** 2 / expected)
  assert statistic < chi2_upper(len(kept) - 1), statistic
  complete = corpus.make_split(dataclasses.replace(V2, curated_missing=0.0),
                               "curated")
  assert set(complete["label"].tolist()) == set(range(96))


def test_v2_hard_negatives_differ_from_the_caption_in_exactly_one_attribute(
    v2_splits):
  retrieval = v2_splits["retrieval"]
  negatives = retrieval["hard_negatives"]
  assert negatives.shape == (V2.n_retrieval, V2.n_hard_negatives)
  assert set(retrieval["scene_type"].tolist()) == {0, 1, 2}
  kinds = collections.Counter()
  for row in range(V2.n_retrieval):
    caption = retrieval["caption"][row]
    assert v2_caption_is_true(caption, retrieval, row, V2.grid_cell)
    assert len(set(negatives[row].tolist()) | {caption}) == (
        V2.n_hard_negatives + 1)
    for k, negative in enumerate(negatives[row]):
      attribute = retrieval["hard_negative_attribute"][row, k]
      assert caption_difference(negative, caption) == [attribute], (
          negative, caption)
      assert not v2_caption_is_true(negative, retrieval, row, V2.grid_cell)
      # Same wording around the attributes (no give-away template).
      assert template_words(negative) == template_words(caption)
      kinds[int(attribute)] += 1
  assert set(kinds) == set(range(5))
  # Every attribute and the relation are named, captions unique.
  assert len(set(retrieval["caption"].tolist())) == V2.n_retrieval
  for caption in retrieval["caption"]:
    assert all(size is not None for _, _, size, _ in parse_v2(caption)[0])


def test_v2_public_retrieval_keys_include_the_hard_negatives():
  config = dataclasses.replace(V2, n_retrieval=20, n_hard_negatives=2)
  records = corpus.make_split(config, "retrieval")
  assert set(records) == PUBLIC_KEYS | {"hard_negatives"}
  assert records["hard_negatives"].shape == (20, 2)
  assert set(corpus.make_split(config, "zeroshot")) == PUBLIC_KEYS


def test_v2_zeroshot_covers_all_96_concepts_with_names_and_prompts(
    v2_splits):
  zeroshot = v2_splits["zeroshot"]
  names = corpus.class_names(V2)
  assert len(names) == len(set(names)) == 96
  np.testing.assert_array_equal(zeroshot["label"],
                                np.arange(V2.n_zeroshot) % 96)
  assert np.all(zeroshot["n_objects"] == 1)
  for row in range(96):
    size, colour, shape = names[zeroshot["label"][row]].split()
    assert (corpus.SIZES[zeroshot["size"][row, 0]],
            corpus.COLOURS[zeroshot["colour"][row, 0]],
            corpus.SHAPES[zeroshot["shape"][row, 0]]) == (size, colour, shape)
  # The tail and the curated split's gaps are in it.
  assert set(corpus_v2.missing_concepts(V2).tolist()) <= set(
      zeroshot["label"].tolist())
  tokenizer_ = tokenizer.WordTokenizer(corpus.vocabulary(V2))
  prompts = [template.format(name) for name in names
             for template in corpus.prompt_templates(V2)]
  tokens = tokenizer_.encode(prompts, V2.max_tokens)
  assert not np.any(tokens == tokenizer.UNK_ID)


def test_v2_captions_and_negatives_fit_the_v2_vocabulary_and_max_tokens(
    v2_splits):
  words = corpus.vocabulary(V2)
  assert words[:len(corpus.vocabulary())] == corpus.vocabulary()
  tokenizer_ = tokenizer.WordTokenizer(words)
  for split, records in v2_splits.items():
    texts = records["caption"].tolist()
    if split == "retrieval":
      texts += records["hard_negatives"].ravel().tolist()
    tokens = tokenizer_.encode(texts, V2.max_tokens)
    assert not np.any(tokens == tokenizer.UNK_ID)
    assert np.all(np.sum(tokens == tokenizer.EOS_ID, axis=1) == 1)


def test_v2_objects_sit_on_the_grid_and_never_share_a_cell(v2_splits):
  train = v2_splits["train"]
  cell = V2.grid_cell
  for row in range(2000):
    occupied = set()
    for _, _, size, top, left in scene_objects(train, row):
      assert top % cell in (0, 1, 2) and left % cell in (0, 1, 2)
      assert top + (size + 1) * cell - 2 <= V2.image_size
      cells = {(top // cell + r, left // cell + c)
               for r in range(size + 1) for c in range(size + 1)}
      assert not cells & occupied, row
      occupied |= cells


def test_v2_split_is_a_prefix_of_a_larger_one():
  small = dataclasses.replace(V2, n_train=4100)
  large = dataclasses.replace(V2, n_train=4300, n_curated=10)
  train_small = corpus.make_split(small, "train")
  train_large = corpus.make_split(large, "train")
  for key in PUBLIC_KEYS:
    np.testing.assert_array_equal(train_small[key], train_large[key][:4100])


def test_v2_fingerprint_and_data_key_separate_versions_and_track_knobs():
  v1_config, v2_config = corpus.CorpusConfig(), corpus.CorpusConfig(version=2)
  for split in corpus.SPLITS:
    assert corpus.fingerprint(v1_config, split) != corpus.fingerprint(
        v2_config, split)
  assert builtin_tfds.config_key(v1_config) != builtin_tfds.config_key(
      v2_config)
  assert builtin_tfds.tokenizer_path("/d", 1) != builtin_tfds.tokenizer_path(
      "/d", 2)
  train = corpus.fingerprint(v2_config, "train")
  for change in ({"zipf_exponent": 0.5}, {"duplicate_rate": 0.1},
                 {"duplicate_paraphrase": 0.0},
                 {"scene_mix": (0.5, 0.2, 0.3)}):
    changed = dataclasses.replace(v2_config, **change)
    assert corpus.fingerprint(changed, "train") != train
    assert builtin_tfds.config_key(changed) != builtin_tfds.config_key(
        v2_config)
  curated = corpus.fingerprint(v2_config, "curated")
  assert corpus.fingerprint(dataclasses.replace(
      v2_config, curated_missing=0.1), "curated") != curated
  assert corpus.fingerprint(dataclasses.replace(
      v2_config, duplicate_rate=0.1), "curated") == curated
  assert corpus.fingerprint(dataclasses.replace(
      v2_config, n_hard_negatives=2), "retrieval") != corpus.fingerprint(
          v2_config, "retrieval")


@pytest.mark.parametrize("field, value, message", [
    ("version", 3, "version"),
    ("zipf_exponent", -1.0, "zipf_exponent"),
    ("scene_mix", (0.5, 0.5, 0.5), "scene_mix"),
    ("duplicate_rate", 1.0, "duplicate_rate"),
    ("duplicate_paraphrase", 2.0, "duplicate_paraphrase"),
    ("curated_balance", "uniform", "curated_balance"),
    ("curated_missing", 0.95, "curated_missing"),
    ("n_hard_negatives", 5, "n_hard_negatives"),
])
def test_bad_v2_config_stops_with_a_message_naming_the_field(field, value,
                                                             message):
  config = dataclasses.replace(V2, **{field: value})
  with pytest.raises(ValueError, match=message):
    corpus.make_split(config, "zeroshot")
