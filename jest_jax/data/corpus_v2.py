"""Version 2 of the built-in corpus: web-like image–caption data.

Selected by `CorpusConfig(version=2)`; `corpus.make_split` and the other
public functions of `corpus` dispatch here. The images, grid, palette,
painter, caption words and noise kinds are version 1's (`corpus`); what
changes is what the scenes and splits are drawn from:

  concepts   a concept is one object kind, colour × shape × size (96). Every
             object of the pool is drawn with probability ∝ rank^-s
             (`zipf_exponent`), ranks from one fixed permutation of the
             concepts (the same for every seed: seeds vary samples, not the
             world), so head concepts are abundant and tail ones rare.
  scenes     one object, a group of 2–3 copies of one concept ("three small
             red circles"), or two concepts of different colour × shape and
             their spatial relation (`scene_mix`).
  difficulty colour is easy (every object pixel shows it); shape needs the
             silhouette; size, small shapes (6 px) and counts need detail;
             relations need two objects' positions and appear only in some
             captions. Counts and relations are rare by `scene_mix`.
  redundancy a `duplicate_rate` share of train records re-render another
             train record of their block (same concepts, count and grid
             cells; new ±1 px jitter, object-colour jitter and pixel noise,
             same background), with the same caption or, for a
             `duplicate_paraphrase` share, a reworded one. Sources are drawn
             uniformly, so duplicates follow the pool's long tail: most
             repeat head concepts.
  noise      version 1's kinds at `noise_rate` / `noise_mix`; an ATTRIBUTE
             corruption changes one colour, shape, size, count or relation.

Splits:

  train      the pool above.
  curated    clean, no duplicates, and unlike the pool: a `curated_missing`
             share of concepts never appears (one fixed random choice,
             unrelated to popularity: what a curator did not list), and the
             rest are "balanced" (each present concept equally often as the
             first object, cycling with the index) or follow the pool's tail
             restricted to them ("pool").
  retrieval  clean, concepts uniform (the tail as often as the head), every
             attribute and the relation named, deduplicated by description,
             with `n_hard_negatives` captions per image that each differ
             from the true one in exactly one attribute or the relation (same
             wording otherwise): `hard_negatives`, str [N, K].
  zeroshot   one object per image, label = concept = index % 96 (balanced,
             tail and curated-missing concepts included); names and prompts
             from `class_names` and `prompt_templates`.

Concept ids: `concept = (colour * 6 + shape) * 2 + size`; `label` is the
concept of the scene's first object. Blocks and streams work as in version
1, on streams of their own.
"""

import math

import numpy as np

from jest_jax.data import corpus as v1

# Bump whenever the same config would produce different version-2 arrays.
GENERATOR_VERSION = 1

N_CONCEPTS = len(v1.COLOURS) * len(v1.SHAPES) * len(v1.SIZES)
SINGLE, GROUP, PAIR = 0, 1, 2
SCENE_NAMES = ("single", "group", "pair")
MAX_COUNT = 3
_N_SLOTS = MAX_COUNT
# What an ATTRIBUTE corruption or a hard negative changed (`swapped`).
COLOUR, SHAPE, SIZE, COUNT, RELATION = 0, 1, 2, 3, 4
ATTRIBUTE_NAMES = ("colour", "shape", "size", "count", "relation")
CURATED_BALANCES = ("balanced", "pool")
MAX_HARD_NEGATIVES = 4

# The world's fixed choices (popularity order, the curated split's gaps):
# part of the generator, not of `CorpusConfig.seed`.
_WORLD_SEED = 2406
_SPLIT_STREAM = {"train": 10, "curated": 11, "retrieval": 12, "zeroshot": 13}

# Edits of a caption's content, in naming order: (attribute, object).
_EDITS = ((COLOUR, 0), (SHAPE, 0), (SIZE, 0), (COLOUR, 1), (SHAPE, 1),
          (SIZE, 1), (COUNT, 0), (RELATION, 0))

# ---------------------------------------------------------------------------
# Caption grammar (words beyond version 1's: counts, plurals, "are these").

_PLURALS = ("circles", "squares", "triangles", "stars", "crosses", "rings")
_COUNT_WORDS = ("", "", "two", "three")
_SINGLE_TEMPLATES = v1._ONE_OBJECT_TEMPLATES
# Aligned with `_SINGLE_TEMPLATES` by index, so changing a count changes the
# object phrase and the verb's number only.
_GROUP_TEMPLATES = ("{A}", "{A}", "a photo of {A}", "a picture of {A}",
                    "an image of {A}", "there are {A}", "these are {A}")
_PAIR_TEMPLATES = v1._TWO_OBJECT_TEMPLATES
# Retrieval: good for one object and for groups alike.
_RETRIEVAL_ONE_KIND_TEMPLATES = ("{A}", "a photo of {A}", "a picture of {A}")
_RETRIEVAL_PAIR_TEMPLATES = v1._RETRIEVAL_TEMPLATES
_ZEROSHOT_TEMPLATES = (
    "a photo of a {}", "a {}", "a picture of a {}", "an image of a {}",
    "there is a {}", "this is a {}", "a photo of the {}",
)
# Template families, concatenated in this order (`_TEMPLATES`).
_FAMILIES = (_SINGLE_TEMPLATES, _GROUP_TEMPLATES, _PAIR_TEMPLATES,
             _RETRIEVAL_ONE_KIND_TEMPLATES, _RETRIEVAL_PAIR_TEMPLATES)
_TEMPLATES = tuple(template for family in _FAMILIES for template in family)
_FAMILY_START = np.cumsum([0] + [len(family) for family in _FAMILIES])[:-1]
_FAMILY_SIZE = np.array([len(family) for family in _FAMILIES])
_MENTIONS_RELATION = np.array(["{rel}" in template for template in _TEMPLATES])
assert len(_SINGLE_TEMPLATES) == len(_GROUP_TEMPLATES)
# `corpus._draw_caption_plan` draws templates below this range.
assert v1._TEMPLATE_DRAW_RANGE % math.lcm(*_FAMILY_SIZE.tolist()) == 0
_RELATIONS = tuple(words for pair in v1._RELATION_WORDS for words in pair)


def concept_parts(concept):
  """(colour, shape, size) of concept ids (ints or int arrays)."""
  n_shapes, n_sizes = len(v1.SHAPES), len(v1.SIZES)
  return (concept // (n_shapes * n_sizes), (concept // n_sizes) % n_shapes,
          concept % n_sizes)


def concept_of(colour, shape, size):
  """Concept id `(colour * 6 + shape) * 2 + size` (ints or int arrays)."""
  return (colour * len(v1.SHAPES) + shape) * len(v1.SIZES) + size


def class_names():
  """The 96 zero-shot class names, index = label = concept."""
  names = []
  for concept in range(N_CONCEPTS):
    colour, shape, size = concept_parts(concept)
    names.append(f"{v1.SIZES[size]} {v1.COLOURS[colour]} {v1.SHAPES[shape]}")
  return names


def prompt_templates():
  """Prompt-ensemble templates, one "{}" each (class names carry the size)."""
  return list(_ZEROSHOT_TEMPLATES)


def vocabulary():
  """Version 1's words, then the words version 2 adds, fixed order."""
  words = list(v1.vocabulary())
  for phrase in list(_GROUP_TEMPLATES) + list(_COUNT_WORDS) + list(_PLURALS):
    for word in phrase.split():
      if not word.startswith("{") and word not in words:
        words.append(word)
  return words


def concept_ranks():
  """int64 [96]: each concept's popularity rank (0 = most frequent)."""
  order = np.random.default_rng(
      np.random.SeedSequence([_WORLD_SEED, 0])).permutation(N_CONCEPTS)
  return np.argsort(order)


def concept_probabilities(config):
  """float64 [96]: how often each concept is drawn in the pool (sums to 1)."""
  weights = (concept_ranks() + 1.0) ** -float(config.zipf_exponent)
  return weights / weights.sum()


def missing_concepts(config):
  """Sorted int64 [k]: the concepts the curated split never shows.

  The first k of one fixed permutation, so a larger `curated_missing` only
  adds concepts to the missing set.
  """
  order = np.random.default_rng(
      np.random.SeedSequence([_WORLD_SEED, 1])).permutation(N_CONCEPTS)
  return np.sort(order[:_n_missing(config)])


def _n_missing(config):
  return int(round(config.curated_missing * N_CONCEPTS))


def fingerprint_fields(config, split):
  """The version-2 fields that change `split`'s arrays (for `fingerprint`)."""
  fields = {"version": 2, "generator_v2": GENERATOR_VERSION}
  if split != "zeroshot":
    fields["scene_mix"] = [float(share) for share in config.scene_mix]
  if split == "train" or (split == "curated"
                          and config.curated_balance == "pool"):
    fields["zipf_exponent"] = float(config.zipf_exponent)
  if split == "train":
    fields["duplicate_rate"] = float(config.duplicate_rate)
    fields["duplicate_paraphrase"] = float(config.duplicate_paraphrase)
  if split == "curated":
    fields["curated_balance"] = config.curated_balance
    fields["curated_missing"] = float(config.curated_missing)
  if split == "retrieval":
    fields["n_hard_negatives"] = int(config.n_hard_negatives)
  return fields


def check_config(config):
  """Raises ValueError naming the bad version-2 field and the fix."""
  if config.zipf_exponent < 0:
    raise ValueError(f"CorpusConfig.zipf_exponent={config.zipf_exponent} "
                     "must be >= 0 (0: uniform concepts)")
  v1.check_shares("scene_mix", config.scene_mix, "one object, group, pair")
  if not 0.0 <= config.duplicate_rate < 1.0:
    raise ValueError(f"CorpusConfig.duplicate_rate={config.duplicate_rate} "
                     "must be in [0, 1)")
  if not 0.0 <= config.duplicate_paraphrase <= 1.0:
    raise ValueError("CorpusConfig.duplicate_paraphrase="
                     f"{config.duplicate_paraphrase} must be in [0, 1]")
  if config.curated_balance not in CURATED_BALANCES:
    raise ValueError(f"CorpusConfig.curated_balance="
                     f"{config.curated_balance!r}; use one of "
                     f"{CURATED_BALANCES}")
  if not 0.0 <= config.curated_missing <= 0.9:
    raise ValueError(f"CorpusConfig.curated_missing={config.curated_missing} "
                     "must be in [0, 0.9] (the curated split needs concepts)")
  if not 1 <= config.n_hard_negatives <= MAX_HARD_NEGATIVES:
    raise ValueError(
        f"CorpusConfig.n_hard_negatives={config.n_hard_negatives} must be in "
        f"1..{MAX_HARD_NEGATIVES} (a lone object has 4 attributes to change)")


# ---------------------------------------------------------------------------
# Splits.


def make_split(config, split, with_metadata=False):
  """Generates one version-2 split (called by `corpus.make_split`).

  Returns:
    The keys of `corpus.make_split`, with `label` = first object's concept;
    the retrieval split adds "hard_negatives": str [N, K]. With
    `with_metadata`, also (object slots 1, 2 are -1 where absent):
      "clean_caption": str [N]; "scene_type": int8 [N] (`SCENE_NAMES`);
      "count": int8 [N], copies of the first concept (1 outside groups);
      "n_objects": int8 [N]; "colour", "shape", "size": int8 [N, 3];
      "top", "left": int16 [N, 3]; "concept": int16 [N], = label;
      "relation": int8 [N], of object 0 to object 1 in pairs, else -1;
      "source": int64 [N], where a mismatch took its caption, else -1;
      "swapped": int8 [N], the attribute an ATTRIBUTE corruption changed
        (`ATTRIBUTE_NAMES`), else -1;
      "duplicate_of": int64 [N], the train record a near-duplicate
        re-renders, else -1; "paraphrased": bool [N];
      retrieval only: "hard_negative_attribute": int8 [N, K].
    Within-block indices ("source", "duplicate_of") may, in the split's
    last, cut block, be >= N (a generated, unkept record).
  """
  records = v1._collect_blocks(config, split, _make_block,
                               ("source", "duplicate_of"))
  if with_metadata:
    return records
  public = ["image", "caption", "corrupt", "corruption", "label", "index"]
  if split == "retrieval":
    public.append("hard_negatives")
  return {key: records[key] for key in public}


def _first_concepts(rng, n, config, split, block_index):
  """int64 [n]: the first object's concept, by the split's law."""
  if split == "train":
    return rng.choice(N_CONCEPTS, n, p=concept_probabilities(config))
  if split == "zeroshot":
    return (block_index * n + np.arange(n)) % N_CONCEPTS
  if split == "retrieval":
    return rng.integers(0, N_CONCEPTS, n)
  present = np.setdiff1d(np.arange(N_CONCEPTS), missing_concepts(config))
  if config.curated_balance == "balanced":
    return present[(block_index * n + np.arange(n)) % len(present)]
  weights = concept_probabilities(config)[present]
  return present[rng.choice(len(present), n, p=weights / weights.sum())]


def _second_concepts(rng, config, split, first):
  """int64 [n]: a second concept of another colour × shape than `first`'s,
  from the split's law restricted to those (one draw per row)."""
  if split == "train":
    weights = concept_probabilities(config)
  elif split == "curated":
    weights = np.ones(N_CONCEPTS)
    if config.curated_balance == "pool":
      weights = concept_probabilities(config)
    weights = weights.copy()
    weights[missing_concepts(config)] = 0.0
  else:
    weights = np.ones(N_CONCEPTS)
  n_sizes = len(v1.SIZES)
  other_class = (np.arange(N_CONCEPTS)[None, :] // n_sizes
                 != first[:, None] // n_sizes)
  cumulative = np.cumsum(weights[None, :] * other_class, axis=1)
  target = rng.random(len(first)) * cumulative[:, -1]
  return np.minimum((cumulative <= target[:, None]).sum(axis=1),
                    N_CONCEPTS - 1)


def _draw_layout(rng, n, config, scene_type, count, size):
  """Grid placements: "row", "col" int16 [n, 3] (top-left cell, -1 absent).

  One object, or a pair, anywhere it fits (a pair's first object leaves
  room for the second, as in version 1); a group on cells that never
  overlap: every cell for small copies, the even-aligned 2×2 blocks for big
  ones (at least 4 of them on a 4×4 grid).
  """
  n_cells = config.image_size // config.grid_cell
  placement_size, placement_row, placement_col, compatible = v1._placements(
      n_cells)
  n_placements = len(placement_size)
  pair = scene_type == PAIR
  has_partner = np.stack([
      np.any(compatible & (placement_size == partner)[None, :], axis=1)
      for partner in range(len(v1.SIZES))], axis=1)     # [P, sizes]
  partner_size = np.maximum(size[:, 1], 0)
  allowed_first = ((placement_size[None, :] == size[:, :1])
                   & (has_partner[:, partner_size].T | ~pair[:, None]))
  first = np.argmax(rng.random((n, n_placements)) * allowed_first, axis=1)
  allowed_second = (compatible[first]
                    & (placement_size[None, :] == partner_size[:, None]))
  second = np.argmax(rng.random((n, n_placements)) * allowed_second, axis=1)
  aligned = ((placement_size == 0)
             | ((placement_row % 2 == 0) & (placement_col % 2 == 0)))
  allowed_group = (placement_size[None, :] == size[:, :1]) & aligned[None, :]
  group = np.argsort(-rng.random((n, n_placements)) * allowed_group,
                     axis=1, kind="stable")[:, :_N_SLOTS]
  placement = np.where((scene_type == GROUP)[:, None], group,
                       np.stack([first, second, second], axis=1))
  row, col = placement_row[placement], placement_col[placement]
  n_present = np.where(pair, 2, count)
  absent = np.arange(_N_SLOTS)[None, :] >= n_present[:, None]
  return {"row": np.where(absent, -1, row).astype(np.int16),
          "col": np.where(absent, -1, col).astype(np.int16)}


def _draw_scenes(rng, n, config, split, block_index):
  """Scenes of one block (before duplication); see `make_split` for keys,
  plus "row", "col" int16 [n, 3]."""
  if split == "zeroshot":
    scene_type = np.full(n, SINGLE, dtype=np.int8)
  else:
    scene_type = rng.choice(3, n, p=np.asarray(config.scene_mix)
                            / np.sum(config.scene_mix)).astype(np.int8)
  count = np.where(scene_type == GROUP, rng.integers(2, MAX_COUNT + 1, n), 1)
  first = _first_concepts(rng, n, config, split, block_index)
  second = _second_concepts(rng, config, split, first)
  concept = np.repeat(first[:, None], _N_SLOTS, axis=1)
  concept[:, 1] = np.where(scene_type == PAIR, second, first)
  n_present = np.where(scene_type == PAIR, 2, count)
  absent = np.arange(_N_SLOTS)[None, :] >= n_present[:, None]
  colour, shape, size = concept_parts(concept)
  scene = {key: np.where(absent, -1, value).astype(np.int8) for key, value in
           (("colour", colour), ("shape", shape), ("size", size))}
  scene.update(_draw_layout(rng, n, config, scene_type, count, scene["size"]))
  scene["jitter"] = rng.integers(-v1._JITTER, v1._JITTER + 1,
                                 (n, _N_SLOTS, 2)).astype(np.int16)
  scene["scene_type"] = scene_type
  scene["count"] = count.astype(np.int8)
  scene["n_objects"] = n_present.astype(np.int8)
  return scene


def _place(scene, grid_cell):
  """Adds "top", "left" (mask position, px) from cells and jitter."""
  present = scene["row"] >= 0
  for key, cell, axis in (("top", "row", 0), ("left", "col", 1)):
    position = (scene[cell] * grid_cell + v1._OBJECT_MARGIN
                + scene["jitter"][..., axis])
    scene[key] = np.where(present, position, -1).astype(np.int16)


def _relation(scene):
  """int8 [n]: relation code of object 0 to object 1 in pairs, else -1."""
  relation = v1._relation({"size": scene["size"][:, :2],
                           "row": scene["row"][:, :2],
                           "col": scene["col"][:, :2],
                           "n_objects": np.full(len(scene["count"]), 2)})
  return np.where(scene["scene_type"] == PAIR, relation, -1).astype(np.int8)


def _description_key(scene, relation):
  """int64 [n]: equal iff two scenes' full captions say the same thing."""
  concept = concept_of(scene["colour"].astype(np.int64), scene["shape"],
                       scene["size"])
  one_kind = concept[:, 0] * (MAX_COUNT + 1) + scene["count"]
  forward = (concept[:, 0] * N_CONCEPTS + concept[:, 1]) * 4 + relation
  backward = (concept[:, 1] * N_CONCEPTS + concept[:, 0]) * 4 + (relation ^ 1)
  pair_key = N_CONCEPTS * (MAX_COUNT + 1) + np.minimum(forward, backward)
  return np.where(scene["scene_type"] == PAIR, pair_key, one_kind)


def _class_key(scene):
  """int64 [n]: equal iff two scenes hold the same colour × shape classes
  and count (sizes left out: a caption may not name them)."""
  per_object = (scene["colour"][:, :2].astype(np.int64) * len(v1.SHAPES)
                + scene["shape"][:, :2])
  pair = scene["scene_type"] == PAIR
  low = np.where(pair, per_object.min(axis=1), per_object[:, 0])
  high = np.where(pair, per_object.max(axis=1), -1)
  return ((low + 1) * (v1.N_CLASSES + 1) + high + 1) * (MAX_COUNT + 1) + (
      scene["count"])


# ---------------------------------------------------------------------------
# Caption content and wording.


def _content(scene, relation, plan, retrieval):
  """What a caption says, in naming order: dict of int64 arrays.

  "colour", "shape", "size", "size_word" [n, 2] (object named first,
  second; -1 none), "count", "relation" (of the first-named object to the
  second, -1 none), "relation_words", "template" (index into `_TEMPLATES`),
  "family" [n].
  """
  n = len(scene["count"])
  pair = scene["scene_type"] == PAIR
  swap = (pair & (plan["swap_order"] == 1)).astype(np.int64)
  order = np.stack([swap, 1 - swap], axis=1)
  rows = np.arange(n)[:, None]
  content = {key: np.where(pair[:, None] | (np.arange(2) == 0)[None, :],
                           scene[key][:, :2][rows, order], -1).astype(np.int64)
             for key in ("colour", "shape", "size")}
  content["size_word"] = np.where(content["size"] >= 0, plan["size_word"], -1)
  content["count"] = scene["count"].astype(np.int64)
  content["relation"] = np.where(swap == 1, relation ^ 1,
                                 relation).astype(np.int64)
  content["relation_words"] = plan["relation_words"].astype(np.int64)
  if retrieval:
    family = np.where(pair, 4, 3)
  else:
    family = np.where(pair, 2, np.where(scene["count"] > 1, 1, 0))
  content["family"] = family
  content["template"] = _FAMILY_START[family] + (plan["template"]
                                                 % _FAMILY_SIZE[family])
  return content


def _phrase(colour, shape, size, count, size_word, article):
  """E.g. "a tiny red circle", "three big blue stars" (`size_word` -1: no
  size; `article` only matters for one object)."""
  words = [] if size_word < 0 else [v1._SIZE_WORDS[size][size_word]]
  words += [v1.COLOURS[colour],
            v1.SHAPES[shape] if count == 1 else _PLURALS[shape]]
  if count > 1:
    words.insert(0, _COUNT_WORDS[count])
  elif article:
    words.insert(0, "an" if words[0][0] in "aeiou" else "a")
  return " ".join(words)


def _phrase_table():
  """Every object phrase, by `_phrase_index`."""
  table = []
  for concept in range(N_CONCEPTS):
    colour, shape, size = concept_parts(concept)
    for count in range(1, MAX_COUNT + 1):
      for size_word in range(-1, len(v1._SIZE_WORDS[size])):
        for article in (False, True):
          table.append(_phrase(colour, shape, size, count, size_word, article))
  return table


_PHRASES = _phrase_table()


def _phrase_index(colour, shape, size, count, size_word, article):
  concept = concept_of(np.maximum(colour, 0), np.maximum(shape, 0),
                       np.maximum(size, 0))
  return ((concept * MAX_COUNT + count - 1) * 3 + size_word + 1) * 2 + article


def _write(content):
  """The captions a content dict says: a list of n str."""
  first = [_phrase_index(content["colour"][:, 0], content["shape"][:, 0],
                         content["size"][:, 0], content["count"],
                         content["size_word"][:, 0], article).tolist()
           for article in (0, 1)]
  second = [_phrase_index(content["colour"][:, 1], content["shape"][:, 1],
                          content["size"][:, 1], 1,
                          content["size_word"][:, 1], article).tolist()
            for article in (0, 1)]
  relation = np.where(content["relation"] >= 0, content["relation"] * 2
                      + content["relation_words"], 0).tolist()
  return [
      _TEMPLATES[t].format(A=_PHRASES[big_a], a=_PHRASES[a],
                           B=_PHRASES[big_b], b=_PHRASES[b],
                           rel=_RELATIONS[r])
      for t, a, big_a, b, big_b, r in zip(
          content["template"].tolist(), first[0], first[1], second[0],
          second[1], relation)]


def _applicable_edits(content):
  """bool [n, 8]: which `_EDITS` change what the caption says."""
  pair = content["colour"][:, 1] >= 0
  says_size = content["size_word"] >= 0
  says_relation = pair & _MENTIONS_RELATION[content["template"]]
  always = np.ones(len(pair), dtype=bool)
  return np.stack([always, always, says_size[:, 0], pair, pair,
                   pair & says_size[:, 1], ~pair, says_relation], axis=1)


def _apply_edits(rng, content, edit):
  """Copy of `content` with edit `_EDITS[edit[i]]` applied to row i; the new
  value is drawn uniformly among the other values."""
  content = {key: value.copy() for key, value in content.items()}
  rows = np.arange(len(edit))
  for code, (attribute, slot) in enumerate(_EDITS):
    chosen = rows[edit == code]
    if attribute == COUNT:
      shift = rng.integers(1, MAX_COUNT, len(chosen))
      content["count"][chosen] = (content["count"][chosen] - 1
                                  + shift) % MAX_COUNT + 1
      # Keep the template's place in the family ("there is" / "there are").
      one = content["count"][chosen] == 1
      family = np.where(content["family"][chosen] >= 3,
                        content["family"][chosen], np.where(one, 0, 1))
      offset = content["template"][chosen] - _FAMILY_START[
          content["family"][chosen]]
      content["family"][chosen] = family
      content["template"][chosen] = _FAMILY_START[family] + offset
    elif attribute == RELATION:
      shift = rng.integers(1, 4, len(chosen))
      content["relation"][chosen] = (content["relation"][chosen] + shift) % 4
    else:
      key, n_values = (("colour", len(v1.COLOURS)), ("shape", len(v1.SHAPES)),
                       ("size", len(v1.SIZES)))[attribute]
      shift = rng.integers(1, n_values, len(chosen))
      content[key][chosen, slot] = (content[key][chosen, slot]
                                    + shift) % n_values
  return content


def _draw_edits(rng, applicable, n_edits):
  """int64 [n, n_edits]: distinct applicable edits per row, random order."""
  scores = rng.random(applicable.shape) + applicable
  return np.argsort(-scores, axis=1, kind="stable")[:, :n_edits]


# ---------------------------------------------------------------------------
# Blocks.


def _make_block(config, split, block_index, masks):
  """One block of `corpus._BLOCK` records from its own random stream."""
  seed_sequence = np.random.SeedSequence(
      [config.seed, _SPLIT_STREAM[split], block_index])
  scene_rng, image_rng, caption_rng, noise_rng, duplicate_rng = [
      np.random.default_rng(child) for child in seed_sequence.spawn(5)]
  n = v1._BLOCK
  scene = _draw_scenes(scene_rng, n, config, split, block_index)
  params = v1._draw_paint_params(image_rng, n, config.image_size, _N_SLOTS)
  plan = v1._draw_caption_plan(caption_rng, n, split)

  duplicate_of = np.full(n, -1, dtype=np.int64)
  paraphrased = np.zeros(n, dtype=bool)
  if split == "train":
    n_duplicates = int(round(config.duplicate_rate * n))
    order = duplicate_rng.permutation(n)
    copies, originals = order[:n_duplicates], np.sort(order[n_duplicates:])
    sources = originals[duplicate_rng.integers(0, len(originals),
                                               n_duplicates)]
    duplicate_of[copies] = sources
    # Same concepts and cells; own jitter, object colour and pixel noise.
    for key in ("colour", "shape", "size", "row", "col", "scene_type",
                "count", "n_objects"):
      scene[key][copies] = scene[key][sources]
    for key in ("start", "delta", "angle"):
      params[key][copies] = params[key][sources]
    n_reworded = int(round(config.duplicate_paraphrase * n_duplicates))
    reworded = duplicate_rng.permutation(n_duplicates) < n_reworded
    paraphrased[copies] = reworded
    for key in plan:
      plan[key][copies[~reworded]] = plan[key][sources[~reworded]]
  _place(scene, config.grid_cell)
  images = v1._paint(scene, params, masks)
  relation = _relation(scene)
  content = _content(scene, relation, plan, split == "retrieval")
  clean = _write(content)
  captions = list(clean)

  if split == "train":
    corruption = v1._corruption_types(noise_rng, n, config.noise_rate,
                                      config.noise_mix)
  else:
    corruption = np.full(n, v1.CLEAN, dtype=np.int8)
  source = np.full(n, -1, dtype=np.int64)
  mismatched = np.flatnonzero(corruption == v1.MISMATCH)
  source[mismatched] = v1._draw_mismatch_sources(noise_rng, _class_key(scene),
                                                 mismatched)
  for target, origin in zip(mismatched.tolist(), source[mismatched].tolist()):
    captions[target] = clean[origin]
  uninformative = np.flatnonzero(corruption == v1.UNINFORMATIVE)
  for target, caption in zip(uninformative.tolist(),
                             v1._uninformative_captions(noise_rng,
                                                        len(uninformative))):
    captions[target] = caption
  swapped = np.full(n, -1, dtype=np.int8)
  attribute = np.flatnonzero(corruption == v1.ATTRIBUTE)
  attribute_content = {key: value[attribute] for key, value in content.items()}
  edit = _draw_edits(noise_rng, _applicable_edits(attribute_content), 1)[:, 0]
  swapped[attribute] = [_EDITS[code][0] for code in edit.tolist()]
  for target, caption in zip(attribute.tolist(), _write(
      _apply_edits(noise_rng, attribute_content, edit))):
    captions[target] = caption

  concept = concept_of(scene["colour"][:, 0].astype(np.int32),
                       scene["shape"][:, 0], scene["size"][:, 0])
  block = {
      "image": images,
      "caption": v1._fixed_width(captions),
      "corrupt": corruption != v1.CLEAN,
      "corruption": corruption,
      "label": concept.astype(np.int32),
      "clean_caption": v1._fixed_width(clean),
      "scene_type": scene["scene_type"], "count": scene["count"],
      "n_objects": scene["n_objects"],
      "colour": scene["colour"], "shape": scene["shape"],
      "size": scene["size"], "top": scene["top"], "left": scene["left"],
      "concept": concept.astype(np.int16),
      "relation": relation,
      "source": source,
      "swapped": swapped,
      "duplicate_of": duplicate_of,
      "paraphrased": paraphrased,
      "description": _description_key(scene, relation),
  }
  if split == "retrieval":
    edits = _draw_edits(noise_rng, _applicable_edits(content),
                        config.n_hard_negatives)
    negatives = [_write(_apply_edits(noise_rng, content, edits[:, k]))
                 for k in range(config.n_hard_negatives)]
    block["hard_negatives"] = np.stack(
        [v1._fixed_width(column) for column in negatives], axis=1)
    block["hard_negative_attribute"] = np.array(
        [edit_attribute for edit_attribute, _ in _EDITS],
        dtype=np.int8)[edits]
  return block

