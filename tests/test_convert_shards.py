"""WebDataset tar shards -> TFDS ArrayRecord: the bad-record policy on
corrupt members, resuming a killed conversion, keys and `.json` fields."""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image
import pytest

from jest_jax import config_lib
from jest_jax import evaluate
from jest_jax import input_pipeline
from jest_jax.data import convert_folder
from jest_jax.data import convert_shards


@pytest.fixture(autouse=True)
def _restore_active_tokenizer():
  yield
  input_pipeline._active_tokenizer = None  # pylint: disable=protected-access


def _jpeg(i):
  buffer = io.BytesIO()
  Image.fromarray(np.full((10 + i % 3, 12, 3), 20 * i % 256, np.uint8)).save(
      buffer, format="JPEG")
  return buffer.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples):
  """`samples`: [(key, {extension: bytes})]."""
  with tarfile.open(path, "w") as tar:
    for key, members in samples:
      for extension, data in members.items():
        _add(tar, f"{key}.{extension}", data)


def good(i, score=None):
  members = {"jpg": _jpeg(i), "txt": f"picture number {i % 4}".encode()}
  if score is not None:
    members["json"] = json.dumps({"clip_score": score, "url": "x"}).encode()
  return f"{i:05d}", members


def make_shards(root):
  """Shard 0: 5 good, one undecodable image, one without a caption.
  Shard 1: 4 good with a CLIP score, one empty caption. Shard 2: 6 good,
  then cut short inside the last sample's image."""
  os.makedirs(root, exist_ok=True)
  shard0 = [good(i) for i in range(5)]
  shard0 += [("00005", {"jpg": b"not a jpeg", "txt": b"broken image"}),
             ("00006", {"jpg": _jpeg(6)})]
  shard1 = [good(i, score=i / 10) for i in range(10, 14)]
  shard1 += [("00014", {"jpg": _jpeg(14), "txt": b"   "})]
  write_shard(os.path.join(root, "000000.tar"), shard0)
  write_shard(os.path.join(root, "000001.tar"), shard1)
  path = os.path.join(root, "000002.tar")
  write_shard(path, [good(i) for i in range(20, 26)])
  data = open(path, "rb").read()
  cut = data.index(b"00025.jpg") + 512 + 100  # Inside the last image.
  with open(path, "wb") as f:
    f.write(data[:cut])
  return os.path.join(root, "{000000..000002}.tar")


def data_config(data_dir, name):
  config = config_lib.base_config()
  config.data.update(dict(name="tfds", tfds_name=name, data_dir=data_dir,
                          image_size=8))
  return config.data


def files_of(config_data, split):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  records = input_pipeline.open_records(config_data, split)
  out = []
  for i in range(len(records)):
    feature = tf_example_pb2.Example.FromString(
        records.reader.source[i]).features.feature
    scores = feature["clip_score"].float_list.value
    out.append((feature["file"].bytes_list.value[0].decode(),
                scores[0] if scores else None))
  return out


def test_corrupt_members_are_skipped_and_counted_per_policy(tmp_path):
  pattern = make_shards(str(tmp_path / "shards"))
  data_dir = str(tmp_path / "tfds")
  report = convert_shards.convert(pattern, "web", data_dir, vocab_size=30,
                                  model_type="word",
                                  json_fields=["clip_score"])
  reasons = {row["row"]: row["reason"] for row in report["skipped"]}
  assert "undecodable" in reasons["000000.tar:00005"]
  assert "caption" in reasons["000000.tar:00006"]
  assert "caption" in reasons["000001.tar:00014"]
  assert "damaged shard" in reasons["000002.tar:00025"]
  kept = files_of(data_config(data_dir, "web"), "train")
  expected = ([f"000000/{i:05d}" for i in range(5)]
              + [f"000001/{i:05d}" for i in range(10, 14)]
              + [f"000002/{i:05d}" for i in range(20, 25)])
  assert [key for key, _ in kept] == expected
  assert report["splits"]["train"] == {"kept": 14, "skipped": 4}
  scores = dict(kept)
  assert np.isnan(scores["000000/00000"])
  np.testing.assert_allclose(scores["000001/00012"], 1.2, rtol=1e-6)
  split = input_pipeline.load_split(data_config(data_dir, "web"), "train")
  assert split.bad_records == 0 and len(split) == 14

  with pytest.raises(convert_folder.ConversionError,
                     match=r"000000.tar:00005: undecodable"):
    convert_shards.convert(pattern, "web_strict", str(tmp_path / "strict"),
                           bad_records="error", vocab_size=30)


def _tree_bytes(root):
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def test_killed_conversion_resumes_to_byte_identical_output(tmp_path):
  pattern = make_shards(str(tmp_path / "shards"))
  whole_dir = str(tmp_path / "whole")
  convert_shards.convert(pattern, "web", whole_dir, vocab_size=30,
                         holdout=0.3)
  resumed_dir = str(tmp_path / "resumed")
  assert convert_shards.convert(pattern, "web", resumed_dir, vocab_size=30,
                                holdout=0.3, stop_after_shards=1) is None
  parts = os.path.join(resumed_dir, ".web.parts")
  assert sorted(os.listdir(parts)) == ["000000.done.json", "000000.part"]
  done_before = os.stat(os.path.join(parts, "000000.part")).st_mtime_ns
  # Resuming with other settings would mix parts made two ways: refused.
  with pytest.raises(convert_folder.ConversionError,
                     match=r"converted with other settings.*image_size"):
    convert_shards.convert(pattern, "web", resumed_dir, vocab_size=30,
                           holdout=0.3, image_size=8)
  # A kill in the middle of shard 1 leaves its temporary file behind.
  with open(os.path.join(parts, "000001.part.tmp999"), "wb") as f:
    f.write(b"half a shard")
  report = convert_shards.convert(pattern, "web", resumed_dir, vocab_size=30,
                                  holdout=0.3, workers=2)
  assert os.stat(os.path.join(parts, "000000.part")).st_mtime_ns == (
      done_before)  # Not converted again.
  whole = _tree_bytes(os.path.join(whole_dir, "web"))
  resumed = _tree_bytes(os.path.join(resumed_dir, "web"))
  assert sorted(whole) == sorted(resumed)
  report_file = os.path.join("1.0.0", convert_folder.REPORT_FILE)
  differing = [name for name in whole
               if name != report_file and whole[name] != resumed[name]]
  assert not differing, differing
  assert any(name.startswith("1.0.0/web-train.array_record") for name in whole)
  # The report differs only in where the dataset was written.
  reports = [json.loads(tree[report_file]) for tree in (whole, resumed)]
  for r in reports:
    r.pop("dataset_dir")
  assert reports[0] == reports[1]
  # The held-out split is the keys whose hash falls below the share.
  held = files_of(data_config(resumed_dir, "web"), "validation")
  assert len(held) == report["splits"]["validation"]["kept"] > 0
  assert all(convert_folder.holdout_share(key) < 0.3 for key, _ in held)


def test_label_field_from_a_member_or_the_json_makes_a_class_feature(tmp_path):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "shards")
  os.makedirs(root)
  samples = []
  for i in range(6):
    key, members = good(i)
    if i % 2:
      members["cls"] = f"kind {i % 3}".encode()  # A member, as WebDataset.
    else:
      members["json"] = json.dumps({"cls": f"kind {i % 3}"}).encode()
    samples.append((key, members))
  samples.append(good(9))  # No label anywhere: a bad record.
  write_shard(os.path.join(root, "000000.tar"), samples)
  data_dir = str(tmp_path / "tfds")
  report = convert_shards.convert(os.path.join(root, "*.tar"), "labelled",
                                  data_dir, vocab_size=30, model_type="word",
                                  label_field="cls")
  assert [r["row"] for r in report["skipped"]] == ["000000.tar:00009"]
  assert "no label" in report["skipped"][0]["reason"]
  records = input_pipeline.open_records(data_config(data_dir, "labelled"),
                                        "train")
  names = evaluate.dataset_class_names(records.dataset_dir)
  assert names == ["kind 0", "kind 1", "kind 2"]
  labels = [names[tf_example_pb2.Example.FromString(
      records.reader.source[i]).features.feature["label"].int64_list.value[0]]
            for i in range(len(records))]
  assert labels == [f"kind {i % 3}" for i in range(6)]
