"""A folder of images + captions -> TFDS ArrayRecord -> grain batches, and
what happens to bad records at conversion and at load time.

The twin of the loader is PIL and SentencePiece applied here, one file at a
time: open, RGB, centre square crop, bilinear resize; encode the caption.
"""

import io
import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jest_jax import config_lib
from jest_jax import input_pipeline
from jest_jax.data import convert_folder
from jest_jax.data import tokenizer as tokenizer_lib

SIZE = 16


def make_folder(root, n=24):
  """JPEG and PNG images of several sizes and modes (all smaller than twice
  SIZE, so JPEG draft decoding does not apply), captions in JSONL."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    height, width = 12 + i, 20 + (i * 7) % 11
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if i % 3 == 1:
      image = image.convert("L")
    name = f"img{i}.png" if i % 2 else f"img{i}.jpg"
    image.save(os.path.join(root, name))
    rows.append({"image": name, "caption": f"photo {i} of {'red blue'[i % 2::2]}"
                 f" noise number {i % 5}"})
  return rows


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def data_config(data_dir, name, **changes):
  config = config_lib.base_config()
  config.data.update(dict(name="tfds", tfds_name=name, data_dir=data_dir,
                          image_size=SIZE, n_retrieval=16, n_zeroshot=48))
  config.data.update(changes)
  return config.data


def twin_image(path):
  image = Image.open(path).convert("RGB")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  rows = make_folder(str(root))
  write_jsonl(str(root / "captions.jsonl"), rows)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  report = convert_folder.convert(
      str(root), {"train": str(root / "captions.jsonl")}, "pairs", data_dir,
      vocab_size=64)
  return str(root), rows, data_dir, report


def test_folder_round_trip_matches_pil_and_sentencepiece_twins(folder):
  root, rows, data_dir, report = folder
  assert report["splits"]["train"] == {"kept": len(rows), "skipped": 0}
  config_data = data_config(data_dir, "pairs", max_tokens=32)
  train_input = input_pipeline.TrainInput(config_data, "train", 8, seed=0)
  tokenizer = tokenizer_lib.SentencePieceTokenizer.load(
      os.path.join(report["dataset_dir"], "spm.model"))
  assert input_pipeline.tokenizer(config_data).fingerprint == (
      tokenizer.fingerprint)
  seen = []
  for step in range(3):  # One epoch of 24.
    batch = train_input.batch(step)
    assert batch["image"].shape == (8, SIZE, SIZE, 3)
    assert not batch["corrupt"].any()
    for row, index in enumerate(batch["index"]):
      source = rows[index]
      np.testing.assert_array_equal(
          batch["image"][row], twin_image(os.path.join(root, source["image"])))
      np.testing.assert_array_equal(
          batch["tokens"][row], tokenizer.encode([source["caption"]], 32)[0])
      assert tokenizer.decode(batch["tokens"][row]) == [source["caption"]]
    seen += batch["index"].tolist()
  assert sorted(seen) == list(range(len(rows)))
  assert train_input.bad_records == 0


def test_csv_captions_give_the_same_records_as_jsonl(folder, tmp_path):
  root, rows, _, _ = folder
  with open(tmp_path / "captions.csv", "w") as f:
    f.write("image,caption\n")
    for row in rows[:6]:
      f.write(f"{row['image']},\"{row['caption']}\"\n")
  convert_folder.convert(root, {"train": str(tmp_path / "captions.csv")},
                         "csv_pairs", str(tmp_path))
  split = input_pipeline.load_split(
      data_config(str(tmp_path), "csv_pairs"), "train")
  np.testing.assert_array_equal(
      split.arrays["image"],
      [twin_image(os.path.join(root, row["image"])) for row in rows[:6]])


def test_bad_rows_are_skipped_and_reported_at_conversion(folder, tmp_path):
  root, rows, _, _ = folder
  with open(os.path.join(tmp_path, "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not really a jpeg")
  bad = [{"image": "broken.jpg", "caption": "a broken file"},
         {"image": "img0.jpg", "caption": "   "},
         {"image": "missing.png", "caption": "no such file"},
         {"caption": "no image field"}]
  write_jsonl(str(tmp_path / "captions.jsonl"), rows[:3] + bad)
  os.symlink(os.path.join(root, "img0.jpg"), tmp_path / "img0.jpg")
  for i in (1, 2):
    os.symlink(os.path.join(root, rows[i]["image"]),
               tmp_path / rows[i]["image"])
  report = convert_folder.convert(
      str(tmp_path), {"train": str(tmp_path / "captions.jsonl")}, "skipping",
      str(tmp_path))
  assert report["splits"]["train"] == {"kept": 3, "skipped": 4}
  reasons = [row["reason"] for row in report["skipped"]]
  assert "undecodable image" in reasons[0]
  assert reasons[1] == "missing or empty caption"
  assert "not found" in reasons[2] and reasons[3] == "missing image path"
  with open(os.path.join(report["dataset_dir"], "conversion.json")) as f:
    assert json.load(f)["splits"]["train"]["skipped"] == 4
  with pytest.raises(convert_folder.ConversionError,
                     match=r"captions.jsonl:4: .*broken.jpg: undecodable"):
    convert_folder.convert(
        str(tmp_path), {"train": str(tmp_path / "captions.jsonl")},
        "stopping", str(tmp_path), bad_records="error")


def _png(seed):
  buffer = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3),
                                                dtype=np.uint8)
  Image.fromarray(pixels).save(buffer, format="png")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def external(tmp_path_factory):
  """A prepared dataset with bad records, as a third party might ship one
  (written without the converter's checks): record 2 has undecodable image
  bytes, record 5 an empty caption, record 7 a long caption."""
  data_dir = str(tmp_path_factory.mktemp("external"))
  examples = []
  for i in range(10):
    caption = {5: "", 7: "one two three four five six seven eight"}.get(
        i, f"caption {i}")
    image = b"garbage bytes" if i == 2 else _png(i)
    examples.append((image, caption, f"{i}.png"))
  convert_folder.write_dataset("external", {"train": examples}, data_dir,
                               vocab_size=40, model_type="word")
  return data_dir


def test_bad_records_at_load_are_replaced_by_the_next_good_one(external):
  config_data = data_config(external, "external", max_tokens=6,
                            long_captions="bad")
  split = input_pipeline.load_split(config_data, "train")
  # 2 -> 3, 5 -> 6, 7 -> 8; the others are themselves.
  np.testing.assert_array_equal(split.arrays["index"],
                                [0, 1, 3, 3, 4, 6, 6, 8, 8, 9])
  assert split.bad_records == 3
  np.testing.assert_array_equal(split.arrays["image"][2],
                                split.arrays["image"][3])
  train_input = input_pipeline.TrainInput(config_data, "train", 10, seed=0)
  batch = train_input.batch(0)
  assert sorted(batch["index"].tolist()) == [0, 1, 3, 3, 4, 6, 6, 8, 8, 9]
  assert train_input.bad_records == 3


def test_long_captions_are_cut_unless_configured_bad(external):
  config_data = data_config(external, "external", max_tokens=6)
  split = input_pipeline.load_split(config_data, "train")
  assert split.arrays["index"][7] == 7 and split.bad_records == 2
  tokens = split.arrays["tokens"][7]
  assert tokens[-1] == tokenizer_lib.EOS_ID and not np.any(tokens == 0)


def test_bad_record_under_error_policy_names_the_record(external):
  config_data = data_config(external, "external", bad_records="error")
  with pytest.raises(input_pipeline.DataError,
                     match=r"external/1.0.0:train record 2: undecodable "
                     r"image.*bad_records=skip"):
    input_pipeline.load_split(config_data, "train")


def test_a_user_sentencepiece_model_is_stored_and_used(folder, tmp_path):
  root, rows, _, _ = folder
  model = str(tmp_path / "user.model")
  user = tokenizer_lib.train_sentencepiece(
      ["some other text entirely", "with its own pieces"], model,
      vocab_size=40, model_type="char")
  write_jsonl(str(tmp_path / "captions.jsonl"), rows[:4])
  convert_folder.convert(root, {"train": str(tmp_path / "captions.jsonl")},
                         "user_tok", str(tmp_path), tokenizer=model)
  config_data = data_config(str(tmp_path), "user_tok")
  assert input_pipeline.tokenizer(config_data).fingerprint == user.fingerprint
  override = ml_collections.ConfigDict(config_data.to_dict())
  override.tokenizer = str(tmp_path / "nothing.model")
  with pytest.raises(input_pipeline.DataError, match="no such SentencePiece"):
    input_pipeline.open_records(override, "train")


def test_sentencepiece_encode_matches_a_one_text_at_a_time_twin(tmp_path):
  tokenizer = tokenizer_lib.train_sentencepiece(
      ["a red circle", "a blue square left of a star", "click here"],
      str(tmp_path / "t.model"), vocab_size=30, model_type="bpe")
  texts = ["a red star", "a blue circle left of a red square", "", "zzz"]
  for max_len in (1, 3, 8):
    tokens, lengths = tokenizer.encode_with_lengths(texts, max_len)
    for text, row, length in zip(texts, tokens, lengths):
      pieces = tokenizer._processor.encode(text)  # pylint: disable=protected-access
      kept = pieces[:max_len - 1] + [tokenizer.eos_id]
      expected = kept + [tokenizer.pad_id] * (max_len - len(kept))
      assert row.tolist() == expected and length == len(pieces) + 1


def _tfds_twin_records(dataset_dir, split, indices):
  """The same records through TFDS's own deserializer (images kept as the
  stored bytes), the twin of `tf_example.FieldReader`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(dataset_dir)
  decoders = {key: tfds.decode.SkipDecoding()
              for key, feature in builder.info.features.items()
              if isinstance(feature, tfds.features.Image)}
  source = builder.as_data_source(split=split, decoders=decoders)
  return [source[i] for i in indices], builder.info.features


def test_field_reader_equals_the_tfds_deserializer(folder, config_builtin):
  from jest_jax.data import tf_example  # pylint: disable=g-import-not-at-top
  for config_data, split in ((data_config(folder[2], "pairs"), "train"),
                             (config_builtin, "zeroshot")):
    records = input_pipeline.open_records(config_data, split)
    twins, features = _tfds_twin_records(records.dataset_dir, split, range(5))
    reader = tf_example.FieldReader.for_features(features, list(features))
    assert reader is not None
    raw = records.reader.source.__getitems__(list(range(5)))
    for serialized, twin in zip(raw, twins):
      parsed = reader(serialized)
      assert parsed.keys() == twin.keys()
      for key in twin:
        np.testing.assert_array_equal(parsed[key], twin[key], err_msg=key)


@pytest.fixture(scope="module")
def config_builtin(tmp_path_factory):
  config = config_lib.base_config()
  config.data.update(dict(data_dir=str(tmp_path_factory.mktemp("builtin")),
                          n_train=16, n_curated=16, n_retrieval=16,
                          n_zeroshot=48))
  return config.data


def test_datasets_with_other_features_load_through_tfds(tmp_path):
  """A caption feature that is a sequence (several captions per image) has
  no fast reader: TFDS deserializes it and the first caption is used."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class MultiCaption(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.
                                   FeaturesDict({
                                       "img": tfds.features.Image(
                                           shape=(SIZE, SIZE, 3)),
                                       "texts": tfds.features.Sequence(
                                           tfds.features.Text())}),
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):
        yield i, {"img": _png(i), "texts": [f"first {i}", f"second {i}"]}

  MultiCaption(data_dir=str(tmp_path)).download_and_prepare(
      file_format="array_record")
  model = str(tmp_path / "t.model")
  tokenizer = tokenizer_lib.train_sentencepiece(
      ["first second 0 1 2 3"], model, vocab_size=20, model_type="char")
  config_data = data_config(str(tmp_path), "multi_caption", image_key="img",
                            text_key="texts", tokenizer=model)
  records = input_pipeline.open_records(config_data, "train")
  assert records.reader.parse is None
  split = input_pipeline.load_split(config_data, "train")
  assert tokenizer.decode(split.arrays["tokens"]) == [
      f"first {i}" for i in range(4)]
  np.testing.assert_array_equal(
      split.arrays["image"][2], np.asarray(Image.open(io.BytesIO(_png(2)))))


def test_holdout_split_is_disjoint_and_stable_across_runs(tmp_path):
  root = str(tmp_path / "folder")
  os.makedirs(root)
  rows = make_folder(root, n=40)
  write_jsonl(os.path.join(root, "a.jsonl"), rows)
  write_jsonl(os.path.join(root, "b.jsonl"), rows[::-1])  # Another order.
  files = {}
  for run, captions in (("one", "a"), ("two", "b")):
    data_dir = str(tmp_path / run)
    report = convert_folder.convert(
        root, {"train": os.path.join(root, f"{captions}.jsonl")}, "held",
        data_dir, vocab_size=64, holdout=0.25)
    files[run] = {}
    for split in ("train", "validation"):
      config_data = data_config(data_dir, "held")
      records = input_pipeline.open_records(config_data, split)
      files[run][split] = {_file_of(records.reader.source[i])
                           for i in range(len(records))}
      assert report["splits"][split]["kept"] == len(records)
  one = files["one"]
  assert one["train"].isdisjoint(one["validation"])
  assert one["train"] | one["validation"] == {r["image"] for r in rows}
  assert 0 < len(one["validation"]) < len(rows)
  assert one["validation"] == files["two"]["validation"]
  # The share is a hash of the key, independent of the other rows.
  assert one["validation"] == {
      r["image"] for r in rows
      if convert_folder.holdout_share(r["image"]) < 0.25}


def _file_of(serialized):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  feature = tf_example_pb2.Example.FromString(serialized).features.feature
  return feature["file"].bytes_list.value[0].decode()


def test_label_column_becomes_a_class_label_feature(tmp_path):
  root = str(tmp_path / "folder")
  os.makedirs(root)
  rows = make_folder(root, n=6)
  for i, row in enumerate(rows):
    row["label"] = ["dog", "cat", "bird"][i % 3]
  rows[4].pop("label")  # A row without its label is a bad record.
  write_jsonl(os.path.join(root, "captions.jsonl"), rows)
  data_dir = str(tmp_path / "tfds")
  report = convert_folder.convert(
      root, {"train": os.path.join(root, "captions.jsonl")}, "animals",
      data_dir, vocab_size=64)
  assert report["class_names"] == ["bird", "cat", "dog"]
  assert report["splits"]["train"] == {"kept": 5, "skipped": 1}
  assert "missing label" in report["skipped"][0]["reason"]
  split = input_pipeline.load_split(data_config(data_dir, "animals"), "train")
  kept = [r for i, r in enumerate(rows) if i != 4]
  np.testing.assert_array_equal(
      split.arrays["label"],
      [report["class_names"].index(r["label"]) for r in kept])
