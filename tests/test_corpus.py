"""Tests of the built-in procedural corpus and its word tokenizer.

Captions are checked by a small parser written here (words → objects), images
by their pixels and by a per-pixel painter written here, the slow twin of
`corpus._paint`.
"""

import collections
import itertools

import numpy as np
import pytest

from jest_jax.data import corpus
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
