"""Example selection for contrastive pretraining: JEST, its baselines, sharded.

  from jest_jax import selection
  learner = selection.Embeddings(image, text, temperature, bias)   # [B, d] ...
  indices = selection.joint_select(key, learner, reference,
                                   sub_batch_size=b, n_chunks=16)   # int32[b]

Single device (`core`): `joint_select` (matrix-free JEST, sigmoid or
softmax, optional blocked-Gibbs refinement), `independent_select`,
`uniform_select`, `batch_score`, `selection_diagnostics`, and the dispatcher
`select(method=...)`. Mesh-sharded (`sharded`): `sharded_select` with
`scope="global"` (exactly the single-device draw) or `scope="local"` (each
shard on its own), and `gather_selected` to move the chosen examples to
balanced shards. `materialised` is the paper's `B x B` form, kept as the
tests' oracle and the benchmarks' baseline.

Imports no model, data or trainer code.
"""

from jest_jax.selection.core import (DEFAULT_BLOCK_SIZE, DEFAULT_GAIN,
                                     DEFAULT_N_CHUNKS, INDEPENDENT_MODES,
                                     LOSSES, METHODS, SCORINGS, Embeddings,
                                     all_finite, batch_score, check_finite,
                                     independent_select, joint_select, select,
                                     selection_diagnostics, uniform_select)
from jest_jax.selection.sharded import (SCOPES, gather_selected,
                                        sharded_select)
