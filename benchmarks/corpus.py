"""Times the built-in corpus and draws a contact sheet of its examples.

  python benchmarks/corpus.py [--n_train 100000] [--versions 1 2]
                              [--out benchmarks/results]

Prints a table of examples/s per split and generator version (one core,
NumPy; train over `--n_train` records, best of `--repeats`), writes it to
`corpus.json`, and draws `corpus_examples.png` (version 1) and
`corpus_v2_examples.png`: 32 train examples with caption and corruption
type, then 8 from each clean split (retrieval with its first hard negative
in version 2).
"""

import argparse
import dataclasses
import json
import os
import textwrap
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-import-not-at-top
from jest_jax.data import corpus  # pylint: disable=g-import-not-at-top


def time_split(config, split, repeats):
  """Best wall time (s) of `make_split` over `repeats` runs."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    corpus.make_split(config, split)
    best = min(best, time.perf_counter() - start)
  return best


def contact_sheet(config, path, n_train_shown=32, n_other_shown=8):
  """Saves a grid of images with their captions (corruption in the title)."""
  shown = []
  train = corpus.make_split(config, "train")
  for row in range(n_train_shown):
    kind = corpus.CORRUPTION_NAMES[train["corruption"][row]]
    shown.append((train["image"][row], f"train #{row} [{kind}]",
                  train["caption"][row]))
  names = corpus.class_names(config)
  for split in ("curated", "retrieval", "zeroshot"):
    records = corpus.make_split(config, split)
    for row in range(n_other_shown):
      title = f"{split} #{row}"
      caption = records["caption"][row]
      if split == "zeroshot":
        title += f" [{names[records['label'][row]]}]"
      if "hard_negatives" in records:
        caption += " | not: " + records["hard_negatives"][row, 0]
      shown.append((records["image"][row], title, caption))
  n_cols = 8
  n_rows = -(-len(shown) // n_cols)
  figure, axes = plt.subplots(n_rows, n_cols,
                              figsize=(2.3 * n_cols, 2.75 * n_rows))
  for axis in axes.ravel():
    axis.axis("off")
  for axis, (image, title, caption) in zip(axes.ravel(), shown):
    axis.imshow(image, interpolation="nearest")
    axis.set_title(title + "\n" + "\n".join(textwrap.wrap(caption, 26)),
                   fontsize=7, loc="left")
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n_train", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--versions", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows = []
  print(f"{'version':>7} {'split':>9} {'records':>8} {'seconds':>8} "
        f"{'examples/s':>11}")
  for version in args.versions:
    config = corpus.CorpusConfig(version=version, n_train=args.n_train)
    for split, size, repeats in (("train", args.n_train, args.repeats),
                                 ("curated", config.n_curated, 1),
                                 ("retrieval", config.n_retrieval, 1),
                                 ("zeroshot", config.n_zeroshot, 1)):
      seconds = time_split(config, split, repeats)
      rows.append(dict(version=version, split=split, records=size,
                       seconds=seconds, examples_per_s=size / seconds,
                       repeats=repeats))
      print(f"{version:>7} {split:>9} {size:>8} {seconds:>8.2f} "
            f"{size / seconds:>11,.0f}")
    sheet = dataclasses.replace(config, n_train=64, n_curated=64,
                                n_retrieval=64, n_zeroshot=96)
    name = ("corpus_examples.png" if version == 1
            else f"corpus_v{version}_examples.png")
    contact_sheet(sheet, os.path.join(args.out, name))
    print(f"wrote {os.path.join(args.out, name)}")
  path = os.path.join(args.out, "corpus.json")
  with open(path, "w") as f:
    json.dump(dict(command="python benchmarks/corpus.py " + " ".join(
        f"--{key} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in vars(args).items() if key != "out"),
                   machine=common.machine(), rows=rows), f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
