"""The paper's scale: (Flexi-)JEST on a TPU pod.

ViT-B/16 image tower and B text tower (SigLIP two-tower), 256px images,
trained sub-batch b = 32,768, f = 0.8 (super-batch 163,840), 16 chunks,
FlexiViT patches 16 / 32, Adam β2 = 0.95, lr 1e-3 with 1% warmup then
cosine, weight decay 1e-4, clip 1, 3B training examples.

  python -m jest_jax.main \\
      --config configs/tpu_flexi_jest.py:method=flexi_jest,tfds_name=my_pairs \\
      --config.data.data_dir=gs://BUCKET/tfds \\
      --config.reference.cache_dir=gs://BUCKET/ref/embeddings/train \\
      --workdir gs://BUCKET/runs/flexi_jest

`method`: iid, jest (scores at patch 16) or flexi_jest (scores at patch 32,
trains half of each sub-batch at 32). Its shapes are checked on CPU by
tests/test_configs.py without running it.

Memory (docs/design.md §8): bfloat16 activations with float32 parameters
and rematerialised transformer blocks under `nn.scan` by default (big_vision's
stacked `encoderblock` layout; `models/big_vision_io.py` loads either), chosen from the per-chip
memory of the compiled step (`benchmarks/pod_memory.py`, README table) so
that 128 trained / 640 scored 256px images per chip fit a 16 GiB chip.
`fsdp=N` splits parameters and optimiser state over N chips (for L/16 and
larger: `image=L/16,text=L,fsdp=8`).
"""

from jest_jax import config_lib

TRAINING_EXAMPLES = 3_000_000_000


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="flexi_jest", tfds_name="my_pairs",
                             batch_size=32768, filter_ratio=0.8,
                             examples=TRAINING_EXAMPLES, vocab_size=32000,
                             image="B/16", text="B", dtype="bfloat16",
                             remat=True, scan=True, fsdp=1)
  if arg.method not in ("iid", "jest", "flexi_jest"):
    raise config_lib.ConfigError(
        f"config argument method={arg.method!r}: use iid, jest or flexi_jest")
  config = config_lib.base_config()
  config.method = arg.method
  config.batch_size = arg.batch_size
  config.total_steps = arg.examples // arg.batch_size
  config.log_every = 100
  config.eval_every = 5000
  config.checkpoint_every = 1000

  config.data.name = "tfds"
  config.data.tfds_name = arg.tfds_name
  config.data.image_size = 256
  config.data.max_tokens = 64
  config.data.num_workers = 8
  config.data.prefetch = 4

  config.model.image = dict(variant=arg.image, image_size=256,
                            pool_type="map")
  config.model.text = dict(variant=arg.text, pool_type="last")
  config.model.dtype = arg.dtype
  config.model.remat = arg.remat
  config.model.scan = arg.scan
  config.mesh.fsdp = arg.fsdp
  config.model.out_dim = 768
  # Recorded for shape checks; the real vocabulary is the data tokenizer's.
  config.model.vocab_size_hint = arg.vocab_size

  config.optim.warmup_steps = max(1, config.total_steps // 100)

  if arg.method != "iid":
    config.selection.kind = "joint"
    config.selection.scoring = "learnability"
    config.selection.filter_ratio = arg.filter_ratio
    config.selection.n_chunks = 16
    config.selection.scope = "global"
  config.patch.small = 16
  config.patch.large = 32
  if arg.method == "flexi_jest":
    config.patch.score = "large"
    config.patch.large_fraction = 0.5
  config.eval.batch_size = 4096
  return config
