"""Times the built-in corpus and draws a contact sheet of its examples.

  python benchmarks/corpus.py [--n_train 100000] [--out benchmarks/results]

Prints examples/s for the train split (one core, NumPy) and writes
`corpus_examples.png`: 32 train examples with caption and corruption type,
then 8 from each clean split.
"""

import argparse
import os
import textwrap
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

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
  names = corpus.class_names()
  for split in ("curated", "retrieval", "zeroshot"):
    records = corpus.make_split(config, split)
    for row in range(n_other_shown):
      title = f"{split} #{row}"
      if split == "zeroshot":
        title += f" [{names[records['label'][row]]}]"
      shown.append((records["image"][row], title, records["caption"][row]))
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
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"))
  args = parser.parse_args()
  config = corpus.CorpusConfig(n_train=args.n_train)
  seconds = time_split(config, "train", args.repeats)
  print(f"train split: {args.n_train} examples in {seconds:.2f} s = "
        f"{args.n_train / seconds:,.0f} examples/s (best of {args.repeats})")
  for split in ("curated", "retrieval", "zeroshot"):
    print(f"{split}: {time_split(config, split, 1):.2f} s")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "corpus_examples.png")
  contact_sheet(corpus.CorpusConfig(n_train=64, n_curated=64, n_retrieval=64,
                                    n_zeroshot=64), path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
