"""JPEG decode rate per host core at pod resolution (256 px).

  python benchmarks/host_decode.py [--count 400] [--repeats 3]

How many images one host core turns into training input per second with the
loader's own code (`jest_jax.data.images.decode`: PIL decode, JPEG draft
scaling, centre crop, resize to 256), for JPEGs stored at 256, 384 and 512 px
on the short side (img2dataset's usual `--image_size 256` output and two
larger originals), quality 90. The images are 1/f ("pink") noise in colour,
whose spectrum is that of natural photographs, so their compressed size and
decode cost are like photos' (a flat synthetic image would decode faster
than anything a user has). One process is one core; `--processes 2` checks
that the rate scales with cores (the loader's worker processes,
`config.data.num_workers`). Prints a table, writes
benchmarks/results/host_decode.json, and the host cores a given step needs:

  cores = images per step per host / (rate per core x step seconds).
"""

import argparse
import io
import multiprocessing
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # pylint: disable=g-import-not-at-top,wrong-import-position

from jest_jax.data import images  # pylint: disable=wrong-import-position


def pink_noise_jpeg(rng, height, width, quality=90):
  """A colour 1/f-noise image (natural-image spectrum) as JPEG bytes."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  radius = np.sqrt(fx ** 2 + fy ** 2)
  radius[0, 0] = 1.0
  channels = []
  for _ in range(3):
    spectrum = (rng.normal(size=radius.shape)
                + 1j * rng.normal(size=radius.shape)) / radius
    spectrum[0, 0] = 0
    channel = np.fft.irfft2(spectrum, s=(height, width))
    channel = (channel - channel.mean()) / (channel.std() + 1e-9)
    channels.append(channel)
  array = np.clip(128 + 48 * np.stack(channels, -1), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="JPEG", quality=quality)
  return out.getvalue()


def decode_all(encoded, size=256):
  for data in encoded:
    images.decode(data, size)
  return len(encoded)


def rate(encoded, processes, repeats):
  """Best-of-`repeats` images/s decoding `encoded` with `processes`."""
  best = 0.0
  chunks = [encoded[i::processes] for i in range(processes)]
  with multiprocessing.get_context("spawn").Pool(processes) as pool:
    pool.map(decode_all, [c[:8] for c in chunks])  # Warm up the workers.
    for _ in range(repeats):
      t0 = time.perf_counter()
      done = sum(pool.map(decode_all, chunks))
      best = max(best, done / (time.perf_counter() - t0))
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--count", type=int, default=400)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sources", default="256x256,384x512,512x683",
                      help="Stored JPEG sizes HxW.")
  parser.add_argument("--processes", default="1,2")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                    "results"))
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  processes = [int(p) for p in args.processes.split(",")]
  rows = []
  for source in args.sources.split(","):
    height, width = (int(v) for v in source.split("x"))
    encoded = [pink_noise_jpeg(rng, height, width) for _ in range(args.count)]
    kb = np.mean([len(e) for e in encoded]) / 1e3
    for p in processes:
      r = rate(encoded, p, args.repeats)
      rows.append(dict(source=source, jpeg_kb=kb, processes=p,
                       images_per_s=r, per_core=r / p))
  table = ["| stored JPEG (H×W) | mean KB | processes | images/s | "
           "per core |", "|" + "---|" * 5]
  for r in rows:
    table.append(f"| {r['source']} | {r['jpeg_kb']:.0f} | {r['processes']} | "
                 f"{r['images_per_s']:.0f} | {r['per_core']:.0f} |")
  command = "python " + " ".join(sys.argv)
  out = dict(command=command, machine=machine(), count=args.count,
             repeats=args.repeats, output_size=256, rows=rows, table=table)
  write_json(args.out, "host_decode", out)
  print(f"command: {command}\nmachine: {out['machine']}\n")
  print("\n".join(table))


if __name__ == "__main__":
  main()
