"""Per-device memory of the compiled train step, from abstract inputs.

Nothing is allocated: the step is lowered with `jax.ShapeDtypeStruct`s that
carry the step's shardings and compiled, and XLA's memory analysis reports
the bytes one device needs. On simulated CPU devices
(`--xla_force_host_platform_device_count`) this sizes a pod step on a
laptop (docs/design.md §8; `benchmarks/pod_memory.py`).
"""

import jax
import jax.numpy as jnp

from jest_jax import config_lib
from jest_jax import selection
from jest_jax import train


def abstract_step_inputs(functions):
  """`(state, super_batch, reference, key)` of `functions.step`, abstract
  and sharded as `functions.jit_step()` wants them."""
  config = functions.config
  state_sh, data_sh, reference_sh, replicated = functions.shardings()
  size = config.data.image_size
  n = config_lib.super_batch_size(config)

  def like(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

  init = train._init_fn(functions.model, functions.optimizer,  # pylint: disable=protected-access
                        (size, size, 3), config.data.max_tokens)
  state = jax.tree.map(lambda x, sh: like(x.shape, x.dtype, sh),
                       jax.eval_shape(init, jax.random.key(0)), state_sh)
  super_batch = dict(
      image=like((n, size, size, 3), jnp.uint8, data_sh),
      tokens=like((n, config.data.max_tokens), jnp.int32, data_sh),
      corrupt=like((n,), jnp.bool_, data_sh))
  reference = None
  if reference_sh is not None:
    dims = config.model.out_dim
    image_dim, text_dim = (dims, dims) if isinstance(dims, int) else dims
    reference = selection.Embeddings(
        image=like((n, image_dim), jnp.float32, data_sh),
        text=like((n, text_dim), jnp.float32, data_sh),
        temperature=like((), jnp.float32, replicated),
        bias=like((), jnp.float32, replicated))
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = like(key.shape, key.dtype, replicated)
  return state, super_batch, reference, key


def memory(compiled):
  """A compiled program's per-device bytes: `argument`, `output`, `temp`
  (XLA's scratch: activations, gradients, collectives' buffers) and `peak`
  (arguments + outputs + temp, less outputs aliased to donated inputs)."""
  analysis = compiled.memory_analysis()
  out = dict(argument=analysis.argument_size_in_bytes,
             output=analysis.output_size_in_bytes,
             temp=analysis.temp_size_in_bytes,
             alias=analysis.alias_size_in_bytes)
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def step_memory(functions):
  """`memory` of `functions.jit_step()` compiled for its config's shapes."""
  compiled = functions.jit_step().lower(
      *abstract_step_inputs(functions)).compile()
  return memory(compiled)
