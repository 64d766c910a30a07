"""Built-in procedural image–caption corpus with web-like caption noise.

Two generator versions, picked by `CorpusConfig.version`: 1 (the default,
described here) and 2, the web-like corpus of `corpus_v2` (long-tailed
concepts, near-duplicates, counts, a curated split that differs from the
pool, hard-negative retrieval). Version 1's records never change.

Each record is a 32×32 RGB image of one or two coloured shapes (6 shapes × 8
colours × 2 sizes) on a noisy, low-saturation gradient, with a compositional
English caption ("a small red circle", "a photo of a big blue square to the
left of a green star"). Splits:

  train      web-like: a configurable share of pairs is corrupted, split among
             MISMATCH (the caption of another image), UNINFORMATIVE ("click
             here to see more", "img 2 9 3 1 jpg") and ATTRIBUTE (one colour,
             shape or size of the caption is wrong). Each record carries its
             ground-truth flag and corruption type.
  curated    clean pairs from the same distribution (for the reference model).
  retrieval  clean two-object pairs whose captions name every attribute and
             the spatial relation, deduplicated so each caption is true of its
             image only (image–text retrieval R@1).
  zeroshot   single-object images labelled by one of 48 colour×shape classes
             (`label = colour * 6 + shape`, balanced: `label = index % 48`).

Objects sit on a grid of `grid_cell`-pixel cells with ±1 px jitter: a small
object fills one cell (less a 1 px margin), a big one a 2×2 block, so a ViT
whose patch divides `grid_cell` sees each object the same way wherever it is.
With free positions a patch-8 ViT learns colour at once but shape only
slowly, and every training run plateaus at colour-only accuracy (measured on a
prototype of this corpus).

Everything is a function of `(config, split)`: each split draws from its own
random stream, in fixed blocks of `_BLOCK` records that each have their own
stream, so a split's first k records do not depend on its size, nor on any
other split's size. Images are drawn with vectorised NumPy (pre-rendered
antialiased masks pasted by fancy indexing); only captions are Python strings.
"""

import dataclasses
import hashlib
import json
import math

import numpy as np

# Bump whenever the same config would produce different arrays: caches built
# from this corpus (reference embeddings) key on it through `fingerprint`.
GENERATOR_VERSION = 1

SPLITS = ("train", "curated", "retrieval", "zeroshot")
_SPLIT_STREAM = {"train": 0, "curated": 1, "retrieval": 2, "zeroshot": 3}

CLEAN, MISMATCH, UNINFORMATIVE, ATTRIBUTE = 0, 1, 2, 3
CORRUPTION_NAMES = ("clean", "mismatch", "uninformative", "attribute")

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple",
           "pink")
# Saturated RGB, far from the grey-ish background and from each other.
PALETTE = np.array([
    (220, 30, 30), (250, 125, 10), (240, 225, 25), (30, 170, 50),
    (20, 200, 220), (40, 70, 235), (140, 50, 210), (250, 110, 185),
], dtype=np.float32)
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
SIZES = ("small", "big")
N_CLASSES = len(COLOURS) * len(SHAPES)

# Records per independent random stream. Part of the generator: changing it
# changes the arrays (bump GENERATOR_VERSION).
_BLOCK = 4096
_SUPERSAMPLE = 8          # mask antialiasing: sub-pixels per pixel side
_COLOUR_JITTER = 12.0     # ± per channel on an object's palette colour
_PIXEL_NOISE = 14.0       # ± uniform per pixel and channel (std ≈ 8)
_OBJECT_MARGIN = 1        # px between an object's box and its cells' edges
_JITTER = 1               # ± px around the snapped position

# ---------------------------------------------------------------------------
# Caption grammar. Every word any caption can contain appears below; the
# vocabulary is collected from these tables (see `vocabulary`).

_SIZE_WORDS = (("small", "tiny"), ("big", "large"))
# Relation codes are of the first-mentioned object relative to the second;
# `code ^ 1` is the inverse relation.
_LEFT, _RIGHT, _ABOVE, _BELOW = 0, 1, 2, 3
_RELATION_WORDS = (("left of", "to the left of"),
                   ("right of", "to the right of"),
                   ("above", "above"),
                   ("below", "below"))
_ONE_OBJECT_TEMPLATES = (
    "{A}", "{a}", "a photo of {A}", "a picture of {A}", "an image of {A}",
    "there is {A}", "this is {A}",
)
_TWO_OBJECT_TEMPLATES = (
    "{A} and {B}", "{a} and {b}", "a photo of {A} and {B}", "{A} with {B}",
    "there is {A} and {B}", "{A} {rel} {B}", "a photo of {A} {rel} {B}",
    "a picture of {A} {rel} {B}",
)
# Retrieval captions must single out their image: every attribute and the
# relation are named, so only wording varies.
_RETRIEVAL_TEMPLATES = (
    "{A} {rel} {B}", "a photo of {A} {rel} {B}", "a picture of {A} {rel} {B}",
)
_UNINFORMATIVE_PHRASES = (
    "image", "photo", "picture", "untitled", "click here to see more",
    "see more", "free download", "stock photo", "photo of the day",
    "click here", "free stock image",
)
# Filename-like captions, "img 2 9 3 1 jpg": digits are separate words so the
# caption stays in the closed vocabulary.
_FILE_PREFIXES = ("img", "dsc")
_FILE_SUFFIXES = ("jpg", "png")
_DIGITS = tuple(str(digit) for digit in range(10))
_FILE_N_DIGITS = 4
_ZEROSHOT_TEMPLATES = (
    "a photo of a {}", "a {}", "a picture of a {}", "an image of a {}",
    "there is a {}", "this is a {}", "a photo of the {}",
    "a small {}", "a big {}",
)
# Longest caption: "a picture of a tiny red circle to the left of a big ...".
MAX_CAPTION_WORDS = 15
# Caption arrays are '<U{this}', whatever the split's content.
MAX_CAPTION_CHARS = 96
_TEMPLATE_DRAW_RANGE = math.lcm(len(_ONE_OBJECT_TEMPLATES),
                                len(_TWO_OBJECT_TEMPLATES),
                                len(_RETRIEVAL_TEMPLATES))


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What to generate; `make_split(config, split)` is a pure function of it.

  `version` picks the generator: 1 (the default) is the corpus described
  above, record for record as it has always been; 2 is the web-like corpus
  of `corpus_v2` (long-tailed concepts, near-duplicates, counts, a curated
  split that differs from the pool, hard-negative retrieval). The fields
  after `max_tokens` are version 2's and version 1 ignores them. Version 2's
  defaults were fixed before any model was trained on it, from what web
  image–text data looks like (the reason is next to each), not from results.

  Attributes:
    seed: root seed; each split and block derives its own stream from it.
    image_size: image side in pixels; a multiple of `grid_cell`.
    grid_cell: object positions snap to multiples of this (px); match the
      largest ViT patch size that should see whole objects.
    n_train, n_curated, n_retrieval, n_zeroshot: records per split.
    noise_rate: share of corrupted pairs in the train split, in [0, 1].
    noise_mix: shares of (mismatch, uninformative, attribute) among the
      corrupted pairs; sums to 1.
    max_tokens: token budget of a caption, eos included (checked to fit).
    version: 1 or 2, the generator (see above).
    zipf_exponent: (v2) concept frequencies fall as rank^-exponent over the
      96 concepts (colour × shape × size); 0 is uniform.
    scene_mix: (v2) shares of (one object, a group of 2–3 copies of one
      concept, two concepts and their spatial relation); sums to 1.
    duplicate_rate: (v2) share of train records that are near-duplicates of
      another train record, in [0, 1).
    duplicate_paraphrase: (v2) share of near-duplicates whose caption is
      reworded (the rest repeat their source's caption word for word).
    curated_balance: (v2) "balanced" (each present concept equally often)
      or "pool" (the pool's long tail) for the curated split.
    curated_missing: (v2) share of the 96 concepts that never appear in the
      curated split, in [0, 0.9].
    n_hard_negatives: (v2) captions per retrieval image that differ from
      its caption in exactly one attribute or the relation, 1..4.
  """
  seed: int = 0
  image_size: int = 32
  grid_cell: int = 8
  n_train: int = 100_000
  n_curated: int = 30_000
  n_retrieval: int = 1_000
  n_zeroshot: int = 1_000
  noise_rate: float = 0.5
  noise_mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
  max_tokens: int = 16
  # Version 1 stays the default until the study of version 2 is in, so
  # numbers measured on version 1 reproduce.
  version: int = 1
  # Word and entity frequencies on the web follow Zipf's law with an
  # exponent near 1; concept counts in image-text crawls are as skewed.
  zipf_exponent: float = 1.0
  # Alt-text mostly names one subject; counts and spatial relations are
  # rare in it (and so the hard part). Both still reach thousands of
  # records in a 100k pool.
  scene_mix: tuple[float, float, float] = (0.55, 0.15, 0.30)
  # De-duplication studies of web crawls (LAION) find a quarter to a half
  # of the images near-duplicated; 0.3 sits at the low end of that.
  duplicate_rate: float = 0.3
  # Re-posted web images come both with the same alt-text and with new;
  # no share is measured that we know of, so an even split keeps both
  # kinds common.
  duplicate_paraphrase: float = 0.5
  # A curated set is collected per category (balanced), by people who list
  # categories in advance, so part of the web's concept space is missing.
  # A quarter is a judgement, not a measurement: most concepts covered, but
  # a reference trained on it cannot know all the pool teaches.
  curated_balance: str = "balanced"
  curated_missing: float = 0.25
  # Four one-attribute edits fit every retrieval scene (a lone object has
  # colour, shape, size and count to change).
  n_hard_negatives: int = 4


def class_names(config=None):
  """The zero-shot class names, index = label.

  Version 1 (also `config=None`): 48 names "red circle", label = colour * 6
  + shape. Version 2: the 96 concepts "small red circle" (`corpus_v2`).
  """
  if config is not None and config.version == 2:
    return _v2().class_names()
  return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def prompt_templates(config=None):
  """Prompt-ensemble templates for zero-shot classification, one "{}" each
  (version 1 unless `config` says 2)."""
  if config is not None and config.version == 2:
    return _v2().prompt_templates()
  return list(_ZEROSHOT_TEMPLATES)


def vocabulary(config=None):
  """Every word a caption or prompt of this corpus can contain, fixed order
  (version 1 unless `config` says 2; version 2's list extends version 1's)."""
  if config is not None and config.version == 2:
    return _v2().vocabulary()
  return _v1_vocabulary()


def _v2():
  # Imported late: corpus_v2 builds on this module's tables and painter.
  from jest_jax.data import corpus_v2  # pylint: disable=g-import-not-at-top
  return corpus_v2


def _v1_vocabulary():
  phrases = (
      list(_ONE_OBJECT_TEMPLATES) + list(_TWO_OBJECT_TEMPLATES)
      + list(_RETRIEVAL_TEMPLATES) + list(_ZEROSHOT_TEMPLATES)
      + [words for pair in _SIZE_WORDS for words in pair]
      + [words for pair in _RELATION_WORDS for words in pair]
      + list(COLOURS) + list(SHAPES) + list(_UNINFORMATIVE_PHRASES)
      + list(_FILE_PREFIXES) + list(_FILE_SUFFIXES) + list(_DIGITS))
  words = []
  for phrase in phrases:
    for word in phrase.replace("{}", " ").split():
      if not word.startswith("{") and word not in words:
        words.append(word)
  return words


def fingerprint(config, split):
  """Short stable hex id of (generator version, relevant config, split).

  Only fields that change the split's arrays enter, so e.g. the train split's
  fingerprint does not change with `n_curated`.
  """
  _check_split(split)
  fields = {
      "version": GENERATOR_VERSION, "split": split, "seed": config.seed,
      "image_size": config.image_size, "grid_cell": config.grid_cell,
      "n": _split_size(config, split),
  }
  if split == "train":
    fields["noise_rate"] = float(config.noise_rate)
    fields["noise_mix"] = [float(share) for share in config.noise_mix]
  if config.version != 1:
    fields.update(_v2().fingerprint_fields(config, split))
  text = json.dumps(fields, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_split(config, split, with_metadata=False):
  """Generates one split.

  Args:
    config: a `CorpusConfig`.
    split: one of "train", "curated", "retrieval", "zeroshot".
    with_metadata: also return the scene and corruption details (keys
      below), for tests, diagnostics and plots.

  Returns:
    For version 2, what `corpus_v2.make_split` says (these keys, plus
    "hard_negatives" in the retrieval split). For version 1,
    a dict of arrays with N = the split's size:
      "image": uint8 [N, H, W, 3].
      "caption": str [N] ('<U..' dtype).
      "corrupt": bool [N], the ground-truth corruption flag.
      "corruption": int8 [N]: 0 clean, 1 mismatch, 2 uninformative,
        3 attribute (`CORRUPTION_NAMES`).
      "label": int32 [N], colour * 6 + shape of the first object.
      "index": int64 [N], 0..N-1, the record's index within the split.
    With `with_metadata`, also (object slot 1 is -1 for one-object images):
      "clean_caption": str [N], the caption before corruption.
      "n_objects": int8 [N]; "colour", "shape", "size": int8 [N, 2];
      "top", "left": int16 [N, 2], pixel position of each object's mask box
        (size `grid_cell - 2` small, `2 * grid_cell - 2` big).
      "source": int64 [N], the record whose caption a mismatch took, else
        -1. Sources are drawn within a block of `_BLOCK` records, so in the
        split's last, cut block one may be >= N (a generated, unkept image).
      "swapped": int8 [N], the attribute an ATTRIBUTE corruption changed
        (0 colour, 1 shape, 2 size), else -1.
  """
  _check_config(config)
  _check_split(split)
  if config.version == 2:
    return _v2().make_split(config, split, with_metadata)
  records = _collect_blocks(config, split, _make_block, ("source",))
  if with_metadata:
    return records
  public = ("image", "caption", "corrupt", "corruption", "label", "index")
  return {key: records[key] for key in public}


def _collect_blocks(config, split, make_block, index_keys):
  """The split's records from `make_block(config, split, block_index,
  masks)`, block after block, with "index" added.

  `index_keys` name within-block record indices (-1: none) to turn into
  split indices; retrieval blocks are deduplicated by "description".
  """
  n_records = _split_size(config, split)
  masks = _shape_masks(config.grid_cell)
  records, n_done, block_index = None, 0, 0
  seen_descriptions = set()
  # At least one block, so an empty split still has the right dtypes.
  while records is None or n_done < n_records:
    block = make_block(config, split, block_index, masks)
    block_index += 1
    if split == "retrieval":
      block = _drop_repeated_descriptions(block, seen_descriptions)
    else:
      for key in index_keys:
        block[key] = np.where(block[key] >= 0, block[key] + n_done, -1)
    block.pop("description")
    if records is None:
      # Filled in place: concatenating blocks would double the peak memory.
      records = {key: np.empty((n_records,) + value.shape[1:], value.dtype)
                 for key, value in block.items()}
    n_kept = min(len(block["label"]), n_records - n_done)
    for key, value in block.items():
      records[key][n_done:n_done + n_kept] = value[:n_kept]
    n_done += n_kept
  records["index"] = np.arange(n_records, dtype=np.int64)
  return records


# ---------------------------------------------------------------------------
# Checks.


def _check_split(split):
  if split not in SPLITS:
    raise ValueError(f"unknown corpus split {split!r}; use one of {SPLITS}")


def _split_size(config, split):
  return {"train": config.n_train, "curated": config.n_curated,
          "retrieval": config.n_retrieval,
          "zeroshot": config.n_zeroshot}[split]


def check_shares(field, shares, parts):
  """Raises ValueError unless `shares` are 3 non-negative numbers summing to
  1 (`parts` names them, for the message)."""
  mix = np.asarray(shares, dtype=np.float64)
  if mix.shape != (3,) or np.any(mix < 0) or abs(mix.sum() - 1.0) > 1e-6:
    raise ValueError(f"CorpusConfig.{field}={shares} must be 3 non-negative "
                     f"shares ({parts}) summing to 1")


def _check_config(config):
  """Raises ValueError naming the bad field and the fix."""
  if config.version not in (1, 2):
    raise ValueError(f"CorpusConfig.version={config.version!r} is unknown; "
                     "use 1 (the original corpus) or 2 (web-like)")
  if config.version == 2:
    _v2().check_config(config)
  if config.grid_cell < 4:
    raise ValueError(f"CorpusConfig.grid_cell={config.grid_cell} is too small "
                     "to draw a shape; use 4 or more (8 for 32 px images)")
  if config.image_size % config.grid_cell:
    raise ValueError(f"CorpusConfig.image_size={config.image_size} must be a "
                     f"multiple of grid_cell={config.grid_cell}")
  if config.image_size // config.grid_cell < 4:
    raise ValueError(
        f"CorpusConfig.image_size={config.image_size} holds fewer than 4 grid "
        f"cells of {config.grid_cell} px per side; two big objects need 4")
  for name in ("n_train", "n_curated", "n_retrieval", "n_zeroshot"):
    if getattr(config, name) < 0:
      raise ValueError(f"CorpusConfig.{name} must be >= 0")
  if not 0.0 <= config.noise_rate <= 1.0:
    raise ValueError(f"CorpusConfig.noise_rate={config.noise_rate} must be in "
                     "[0, 1]")
  check_shares("noise_mix", config.noise_mix,
               "mismatch, uninformative, attribute")
  if config.max_tokens < MAX_CAPTION_WORDS + 1:
    raise ValueError(
        f"CorpusConfig.max_tokens={config.max_tokens} is too short: captions "
        f"have up to {MAX_CAPTION_WORDS} words plus eos; use "
        f"{MAX_CAPTION_WORDS + 1} or more")


# ---------------------------------------------------------------------------
# Shapes and images.


def _shape_inside(shape, u, v):
  """Whether points `(u, v)` in [-1, 1]² (v down) are inside `shape`."""
  radius2 = u * u + v * v
  if shape == "circle":
    return radius2 <= 1.0
  if shape == "square":
    return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
  if shape == "triangle":
    return _inside_polygon(u, v, [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
  if shape == "star":
    corners = np.arange(10)
    angles = corners * np.pi / 5 - np.pi / 2
    radii = np.where(corners % 2 == 0, 1.0, 0.45)
    # Shifted down so the five-pointed star is centred in its box.
    return _inside_polygon(u, v, list(zip(radii * np.cos(angles),
                                          radii * np.sin(angles) + 0.1)))
  if shape == "cross":
    return (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
  if shape == "ring":
    return (radius2 <= 1.0) & (radius2 >= 0.3)
  raise ValueError(f"unknown shape {shape!r}")


def _inside_polygon(u, v, vertices):
  """Even-odd rule point-in-polygon test, vectorised over points."""
  inside = np.zeros(np.shape(u), dtype=bool)
  for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
    crosses = (y0 > v) != (y1 > v)
    with np.errstate(divide="ignore", invalid="ignore"):
      x_at_v = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (u < x_at_v)
  return inside


def _mask_sides(grid_cell):
  """Mask side per size (px): one cell or a 2×2 block, less the margins."""
  return (grid_cell - 2 * _OBJECT_MARGIN, 2 * grid_cell - 2 * _OBJECT_MARGIN)


def _shape_masks(grid_cell):
  """Antialiased alpha masks: a tuple over sizes of float32 [6, side, side]."""
  masks = []
  for side in _mask_sides(grid_cell):
    n_sub = side * _SUPERSAMPLE
    centres = (np.arange(n_sub) + 0.5) / n_sub * 2.0 - 1.0
    u, v = np.meshgrid(centres, centres, indexing="xy")
    per_shape = [
        _shape_inside(shape, u, v).reshape(
            side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(1, 3))
        for shape in SHAPES]
    masks.append(np.stack(per_shape).astype(np.float32))
  return tuple(masks)


def _placements(n_cells):
  """All object placements on an `n_cells`² grid, and which may coexist.

  Returns:
    size: int8 [P], 0 small (one cell) or 1 big (2×2 cells).
    row, col: int16 [P], the placement's top-left cell.
    compatible: bool [P, P], the two placements share no cell.
  """
  sizes, rows, cols, occupied = [], [], [], []
  for size, span in ((0, 1), (1, 2)):
    for row in range(n_cells - span + 1):
      for col in range(n_cells - span + 1):
        cells = np.zeros((n_cells, n_cells), dtype=bool)
        cells[row:row + span, col:col + span] = True
        sizes.append(size)
        rows.append(row)
        cols.append(col)
        occupied.append(cells.ravel())
  occupied = np.stack(occupied)
  compatible = ~(occupied.astype(np.int32) @ occupied.T.astype(np.int32) > 0)
  return (np.array(sizes, np.int8), np.array(rows, np.int16),
          np.array(cols, np.int16), compatible)


def _draw_scenes(rng, n, config, n_objects):
  """Draws `n` scenes with objects on the grid.

  Args:
    rng: a numpy Generator.
    n: number of scenes.
    config: a CorpusConfig.
    n_objects: int8 [n], 1 or 2 objects per scene.

  Returns:
    dict with "n_objects" int8 [n] and "colour", "shape", "size" int8 [n, 2],
    "row", "col" int16 [n, 2] (top-left cell), "top", "left" int16 [n, 2]
    (mask position, px); slot 1 is -1 where there is one object.
  """
  n_cells = config.image_size // config.grid_cell
  placement_size, placement_row, placement_col, compatible = _placements(
      n_cells)
  colour = rng.integers(0, len(COLOURS), (n, 2)).astype(np.int8)
  shape = rng.integers(0, len(SHAPES), (n, 2)).astype(np.int8)
  size = rng.integers(0, len(SIZES), (n, 2)).astype(np.int8)
  # Uniform over placements of the drawn size: the argmax of uniform noise
  # restricted to the allowed placements picks one of them uniformly. With
  # two objects, the first must leave room for the second (a big object in
  # the middle of a 4×4 grid leaves none for another big one).
  has_partner = np.stack([
      np.any(compatible & (placement_size == partner_size)[None, :], axis=1)
      for partner_size in range(len(SIZES))], axis=1)     # [P, sizes]
  allowed_first = ((placement_size[None, :] == size[:, :1])
                   & (has_partner[:, size[:, 1]].T | (n_objects[:, None] < 2)))
  first = np.argmax(rng.random((n, len(placement_size))) * allowed_first,
                    axis=1)
  allowed_second = (compatible[first]
                    & (placement_size[None, :] == size[:, 1:2]))
  second = np.argmax(rng.random((n, len(placement_size))) * allowed_second,
                     axis=1)
  assert np.all(allowed_first.any(axis=1)
                & (allowed_second.any(axis=1) | (n_objects < 2)))
  placement = np.stack([first, second], axis=1)
  row = placement_row[placement]
  col = placement_col[placement]
  jitter = rng.integers(-_JITTER, _JITTER + 1, (n, 2, 2)).astype(np.int16)
  top = row * config.grid_cell + _OBJECT_MARGIN + jitter[..., 0]
  left = col * config.grid_cell + _OBJECT_MARGIN + jitter[..., 1]
  absent = np.arange(2)[None, :] >= n_objects[:, None]
  scene = {"colour": colour, "shape": shape, "size": size, "row": row,
           "col": col, "top": top, "left": left}
  scene = {key: np.where(absent, -1, value).astype(value.dtype)
           for key, value in scene.items()}
  scene["n_objects"] = n_objects.astype(np.int8)
  return scene


def _draw_paint_params(rng, n, side, n_slots=2):
  """Random appearance of `n` images of `side`² px (everything but layout).

  Returns:
    dict: "start", "delta" float32 [n, 3], the background colour at one end
    of the gradient and the change to the other end (low saturation: a grey
    level plus small tints); "angle" float64 [n], the gradient's direction
    (rad); "colour_jitter" float32 [n, n_slots, 3], added to each object's
    palette colour; "noise" uint8 [n, side, side, 3], raw pixel noise bytes.
  """
  grey = rng.uniform(50.0, 210.0, (n, 1, 1))
  ends = (grey + rng.uniform(-50.0, 50.0, (n, 2, 1))
          + rng.uniform(-20.0, 20.0, (n, 2, 3))).astype(np.float32)
  return {
      "start": ends[:, 0],
      "delta": ends[:, 1] - ends[:, 0],
      "angle": rng.uniform(0.0, 2.0 * np.pi, n),
      "colour_jitter": rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER,
                                   (n, n_slots, 3)).astype(np.float32),
      # Uniform noise from random bytes: ~5x cheaper than normal draws.
      "noise": rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
  }


def _paint(scene, params, masks):
  """Paints scenes: uint8 [n, H, W, 3] (H = W = the noise's side).

  A linear gradient from `start` to `start + delta` along `angle`, spanning
  the image corner to corner; the objects alpha-blended on top in palette
  colour plus jitter; then uniform noise of ±`_PIXEL_NOISE` per pixel and
  channel; rounded half up. All in float32: this is the corpus's cost.
  """
  n, side = params["noise"].shape[:2]
  start, delta = params["start"], params["delta"]
  angle = params["angle"]
  # Position along the gradient, in [0, 1] over the image: 0.5 + column part
  # + row part, each scaled so the corners reach 0 and 1.
  coords = ((np.arange(side) + 0.5) / side - 0.5) / np.sqrt(2.0)
  along_col = (np.cos(angle)[:, None] * coords + 0.5).astype(np.float32)
  along_row = (np.sin(angle)[:, None] * coords).astype(np.float32)
  # background[n, y, (x, c)] = start_c + delta_c * (along_col_x + along_row_y),
  # built on rows of W * 3 values: NumPy broadcasts slowly over a trailing
  # axis of 3, quickly over a contiguous one of 96.
  col_term = start[:, None, :] + delta[:, None, :] * along_col[:, :, None]
  images = along_row[:, :, None] * np.tile(delta, (1, side))[:, None, :]
  images += col_term.reshape(n, 1, side * 3)
  images = images.reshape(n, side, side, 3)

  object_colour = (PALETTE[np.maximum(scene["colour"], 0)]
                   + params["colour_jitter"])
  for slot in range(scene["size"].shape[1]):
    for size_index, size_masks in enumerate(masks):
      examples = np.flatnonzero(scene["size"][:, slot] == size_index)
      if not len(examples):
        continue
      offsets = np.arange(size_masks.shape[-1])
      rows = (scene["top"][examples, slot][:, None, None]
              + offsets[None, :, None])
      cols = (scene["left"][examples, slot][:, None, None]
              + offsets[None, None, :])
      batch = examples[:, None, None]
      alpha = size_masks[scene["shape"][examples, slot]][..., None]
      colour = object_colour[examples, slot][:, None, None, :]
      images[batch, rows, cols] = (images[batch, rows, cols] * (1.0 - alpha)
                                   + colour * alpha)
  noise = params["noise"].astype(np.float32)
  noise *= np.float32(_PIXEL_NOISE / 127.5)
  images += noise
  images -= np.float32(_PIXEL_NOISE)
  np.clip(images, 0.0, 255.0, out=images)
  # +0.5 then truncation rounds half up (values are >= 0).
  images += np.float32(0.5)
  return images.astype(np.uint8)


# ---------------------------------------------------------------------------
# Captions.


def _relation(scene):
  """Relation code of object 0 relative to object 1, int8 [n] (-1: none).

  The dominant axis between the objects' centres decides (ties:
  horizontal), so exactly one relation holds for each two-object image.
  """
  span = scene["size"].astype(np.float32) + 1.0
  centre_row = scene["row"] + span / 2.0
  centre_col = scene["col"] + span / 2.0
  d_row = centre_row[:, 0] - centre_row[:, 1]
  d_col = centre_col[:, 0] - centre_col[:, 1]
  horizontal = np.abs(d_col) >= np.abs(d_row)
  relation = np.where(horizontal, np.where(d_col < 0, _LEFT, _RIGHT),
                      np.where(d_row < 0, _ABOVE, _BELOW))
  return np.where(scene["n_objects"] == 2, relation, -1).astype(np.int8)


def _draw_caption_plan(rng, n, split):
  """Wording choices for `n` captions, independent of the scene's content.

  Returns:
    dict of int arrays [n]: "template"; "swap_order" (name object 1 first);
    "relation_words" (which paraphrase of the relation); and [n, 2]:
    "size_word" (-1 no size, else which synonym).
  """
  if split == "retrieval":
    say_size = np.ones((n, 2), dtype=bool)
  else:
    say_size = rng.random((n, 2)) < 0.5
  synonym = rng.integers(0, 2, (n, 2))
  return {
      # Drawn below a common multiple of the list lengths and folded by each
      # caption's own list, so every list is sampled uniformly.
      "template": rng.integers(0, _TEMPLATE_DRAW_RANGE, n),
      "swap_order": rng.integers(0, 2, n),
      "relation_words": rng.integers(0, 2, n),
      "size_word": np.where(say_size, synonym, -1),
  }


def _object_phrase(colour, shape, size, size_word, article):
  """E.g. "a tiny red circle" (`size_word` -1: no size; else the synonym)."""
  words = []
  if size_word >= 0:
    words.append(_SIZE_WORDS[size][size_word])
  words += [COLOURS[colour], SHAPES[shape]]
  if article:
    words.insert(0, "an" if words[0][0] in "aeiou" else "a")
  return " ".join(words)


def _phrase_tables():
  """Every object phrase, without and with article, by `_phrase_index`."""
  bare, with_article = [], []
  for colour in range(len(COLOURS)):
    for shape in range(len(SHAPES)):
      for size in range(len(SIZES)):
        for size_word in range(-1, len(_SIZE_WORDS[size])):
          bare.append(_object_phrase(colour, shape, size, size_word, False))
          with_article.append(_object_phrase(colour, shape, size, size_word,
                                             True))
  return bare, with_article


_PHRASES, _PHRASES_WITH_ARTICLE = _phrase_tables()


def _phrase_index(colour, shape, size, size_word):
  """Index into `_phrase_tables` (array arguments of equal shape)."""
  n_size_words = len(_SIZE_WORDS[0]) + 1
  return (((colour.astype(np.int64) * len(SHAPES) + shape) * len(SIZES)
           + size) * n_size_words + size_word + 1)


def _write_captions(scene, relation, plan, split):
  """Captions for scenes under a wording plan.

  Args:
    scene: dict of scene arrays (see `_draw_scenes`), n scenes.
    relation: int8 [n], `_relation` of the true scene (an attribute swap
      must not move the objects).
    plan: dict of wording arrays (see `_draw_caption_plan`), n rows.
    split: the split name (retrieval captions use their own templates).

  Returns:
    A list of n str.
  """
  n = len(scene["n_objects"])
  two = scene["n_objects"] == 2
  swap = two & (plan["swap_order"] == 1)
  rows = np.arange(n)
  first, second = swap.astype(np.int64), 1 - swap.astype(np.int64)
  phrase = _phrase_index(*(np.maximum(array, 0) for array in (
      scene["colour"], scene["shape"], scene["size"])), plan["size_word"])
  first_phrase = phrase[rows, first].tolist()
  second_phrase = phrase[rows, second].tolist()
  # The relation of the first-named object to the second.
  first_relation = np.where(swap, relation ^ 1, relation)
  relation_text = np.where(two, first_relation * 2 + plan["relation_words"],
                           0).tolist()
  two_templates = (_RETRIEVAL_TEMPLATES if split == "retrieval"
                   else _TWO_OBJECT_TEMPLATES)
  templates = _ONE_OBJECT_TEMPLATES + two_templates
  template = np.where(two, len(_ONE_OBJECT_TEMPLATES)
                      + plan["template"] % len(two_templates),
                      plan["template"] % len(_ONE_OBJECT_TEMPLATES)).tolist()
  relations = [words for pair in _RELATION_WORDS for words in pair]
  return [
      templates[t].format(
          A=_PHRASES_WITH_ARTICLE[a], a=_PHRASES[a],
          B=_PHRASES_WITH_ARTICLE[b], b=_PHRASES[b], rel=relations[r])
      for t, a, b, r in zip(template, first_phrase, second_phrase,
                            relation_text)]


def _uninformative_captions(rng, n):
  """Captions that say nothing about the image: a list of n str."""
  phrase = rng.integers(0, len(_UNINFORMATIVE_PHRASES), n).tolist()
  is_filename = (rng.random(n) < 0.4).tolist()
  prefix = rng.integers(0, len(_FILE_PREFIXES), n).tolist()
  suffix = rng.integers(0, len(_FILE_SUFFIXES), n).tolist()
  digits = rng.integers(0, 10, (n, _FILE_N_DIGITS)).tolist()
  captions = []
  for i in range(n):
    if is_filename[i]:
      captions.append(" ".join([_FILE_PREFIXES[prefix[i]]]
                               + [_DIGITS[d] for d in digits[i]]
                               + [_FILE_SUFFIXES[suffix[i]]]))
    else:
      captions.append(_UNINFORMATIVE_PHRASES[phrase[i]])
  return captions


# ---------------------------------------------------------------------------
# Corruption.


def _corruption_types(rng, n, noise_rate, noise_mix):
  """int8 [n]: exactly round(noise_rate * n) corrupted, split by the mix.

  Exact counts (largest remainder) rather than coin flips keep the realised
  rate at the configured one in every block.
  """
  n_corrupt = int(round(noise_rate * n))
  shares = np.asarray(noise_mix, dtype=np.float64) * n_corrupt
  counts = np.floor(shares).astype(np.int64)
  order = np.argsort(-(shares - counts), kind="stable")
  counts[order[:n_corrupt - counts.sum()]] += 1
  types = np.concatenate([
      np.full(n - n_corrupt, CLEAN)]
      + [np.full(count, kind) for kind, count in zip(
          (MISMATCH, UNINFORMATIVE, ATTRIBUTE), counts)]).astype(np.int8)
  return rng.permutation(types)


def _content_key(scene):
  """int64 [n]: equal iff two scenes hold the same multiset of classes.

  Sizes are left out on purpose: a caption that omits sizes ("a red circle")
  would be true of an image whose objects differ from its own only in size.
  """
  per_object = (scene["colour"].astype(np.int64) * len(SHAPES)
                + scene["shape"])
  per_object = np.where(scene["colour"] >= 0, per_object, -1)
  low = per_object.min(axis=1)
  high = per_object.max(axis=1)
  return (low + 1) * (N_CLASSES + 1) + (high + 1)


def _draw_mismatch_sources(rng, key, targets):
  """For each target record, a record with another `key` (int64 [n], e.g.
  `_content_key`): int64 [k]."""
  n = len(key)
  sources = np.empty(len(targets), dtype=np.int64)
  pending = np.arange(len(targets))
  # Redraw the few collisions; each try succeeds with probability >~ 0.97.
  for _ in range(100):
    if not len(pending):
      return sources
    drawn = rng.integers(0, n, len(pending))
    sources[pending] = drawn
    pending = pending[key[drawn] == key[targets[pending]]]
  raise AssertionError("no record with other classes to take a caption from")


def _swap_attribute(rng, scene, plan, targets):
  """Copies `scene` with one mentioned attribute of one object changed.

  Returns:
    (scene', swapped): the attribute changed per target, int8 [k] (0 colour,
    1 shape, 2 size; size only where the caption mentions it).
  """
  scene = {key: value.copy() for key, value in scene.items()}
  k = len(targets)
  slot = np.where(scene["n_objects"][targets] == 2,
                  rng.integers(0, 2, k), 0)
  size_said = plan["size_word"][targets, slot] >= 0
  swapped = np.where(size_said, rng.integers(0, 3, k),
                     rng.integers(0, 2, k)).astype(np.int8)
  for attribute, (key, n_values) in enumerate((("colour", len(COLOURS)),
                                               ("shape", len(SHAPES)),
                                               ("size", len(SIZES)))):
    chosen = swapped == attribute
    rows, cols = targets[chosen], slot[chosen]
    # A nonzero shift modulo the number of values: a uniformly drawn other
    # value, never the true one.
    shift = rng.integers(1, n_values, len(rows))
    scene[key][rows, cols] = (scene[key][rows, cols] + shift) % n_values
  return scene, swapped


# ---------------------------------------------------------------------------
# Blocks.


def _make_block(config, split, block_index, masks):
  """One block of `_BLOCK` records from its own random stream."""
  seed_sequence = np.random.SeedSequence(
      [config.seed, _SPLIT_STREAM[split], block_index])
  scene_rng, image_rng, caption_rng, noise_rng = [
      np.random.default_rng(child) for child in seed_sequence.spawn(4)]
  n = _BLOCK
  if split == "zeroshot":
    n_objects = np.ones(n, dtype=np.int8)
  elif split == "retrieval":
    n_objects = np.full(n, 2, dtype=np.int8)
  else:
    n_objects = scene_rng.integers(1, 3, n).astype(np.int8)
  scene = _draw_scenes(scene_rng, n, config, n_objects)
  if split == "zeroshot":
    # Balanced classes: label = index % 48 (indices continue across blocks).
    label = (block_index * n + np.arange(n)) % N_CLASSES
    scene["colour"][:, 0] = label // len(SHAPES)
    scene["shape"][:, 0] = label % len(SHAPES)
  images = _paint(scene, _draw_paint_params(image_rng, n, config.image_size),
                  masks)
  plan = _draw_caption_plan(caption_rng, n, split)
  relation = _relation(scene)
  clean = _write_captions(scene, relation, plan, split)
  captions = list(clean)

  if split == "train":
    corruption = _corruption_types(noise_rng, n, config.noise_rate,
                                   config.noise_mix)
  else:
    corruption = np.full(n, CLEAN, dtype=np.int8)
  source = np.full(n, -1, dtype=np.int64)
  swapped = np.full(n, -1, dtype=np.int8)
  mismatched = np.flatnonzero(corruption == MISMATCH)
  source[mismatched] = _draw_mismatch_sources(noise_rng, _content_key(scene),
                                              mismatched)
  for target, origin in zip(mismatched.tolist(), source[mismatched].tolist()):
    captions[target] = clean[origin]
  uninformative = np.flatnonzero(corruption == UNINFORMATIVE)
  for target, caption in zip(uninformative.tolist(),
                             _uninformative_captions(noise_rng,
                                                     len(uninformative))):
    captions[target] = caption
  attribute = np.flatnonzero(corruption == ATTRIBUTE)
  wrong_scene, swapped[attribute] = _swap_attribute(noise_rng, scene, plan,
                                                    attribute)
  wrong_plan = {key: value[attribute] for key, value in plan.items()}
  wrong_captions = _write_captions(
      {key: value[attribute] for key, value in wrong_scene.items()},
      relation[attribute], wrong_plan, split)
  for target, caption in zip(attribute.tolist(), wrong_captions):
    captions[target] = caption

  label = (scene["colour"][:, 0].astype(np.int32) * len(SHAPES)
           + scene["shape"][:, 0])
  return {
      "image": images,
      "caption": _fixed_width(captions),
      "corrupt": corruption != CLEAN,
      "corruption": corruption,
      "label": label.astype(np.int32),
      "clean_caption": _fixed_width(clean),
      "n_objects": scene["n_objects"],
      "colour": scene["colour"], "shape": scene["shape"],
      "size": scene["size"], "top": scene["top"], "left": scene["left"],
      "source": source,
      "swapped": swapped,
      "description": _description_key(scene, relation),
  }


def _fixed_width(captions):
  """str [n] of dtype '<U{MAX_CAPTION_CHARS}' (NumPy would silently cut)."""
  array = np.array(captions, dtype=str)
  if array.dtype.itemsize // 4 > MAX_CAPTION_CHARS:
    raise AssertionError("a caption is longer than MAX_CAPTION_CHARS")
  return array.astype(f"<U{MAX_CAPTION_CHARS}")


def _description_key(scene, relation):
  """int64 [n]: equal iff two scenes' full captions say the same thing.

  Objects with all attributes plus the relation, in a canonical order
  ("A left of B" is "B right of A").
  """
  per_object = ((scene["colour"].astype(np.int64) * len(SHAPES)
                 + scene["shape"]) * len(SIZES) + scene["size"] + 1)
  n_kinds = N_CLASSES * len(SIZES) + 1
  relation = relation.astype(np.int64) + 1
  forward = (per_object[:, 0] * n_kinds + per_object[:, 1]) * 5 + relation
  inverse = np.where(relation > 0, ((relation - 1) ^ 1) + 1, 0)
  backward = (per_object[:, 1] * n_kinds + per_object[:, 0]) * 5 + inverse
  return np.minimum(forward, backward)


def _drop_repeated_descriptions(block, seen):
  """Keeps records whose description is new (first occurrence), in order.

  Updates `seen`, the descriptions kept by earlier blocks.
  """
  keep = np.zeros(len(block["description"]), dtype=bool)
  for row, description in enumerate(block["description"].tolist()):
    if description not in seen:
      seen.add(description)
      keep[row] = True
  return {key: value[keep] for key, value in block.items()}
