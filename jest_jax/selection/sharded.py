"""Selection over a super-batch sharded along a mesh axis (`jax.shard_map`).

Two scopes, one kernel (`core`):

- `global`: exactly `core.select` on the whole super-batch. Every device
  keeps the running sums of its own rows; per chunk, one `all_gather` of the
  `[B]` logits makes them identical everywhere, every device draws the same
  Gumbel noise (`fold_in(key, step)`, replicated key) and so the same chunk,
  and one `psum` of the chunk's `[c, d]` rows (zero except on their owner)
  hands every device the new examples' embeddings. Traffic per chunk:
  `B + 4 c d` floats for learnability; work per device `O(B b d / D)`.
- `local`: shard `r` selects `b / D` of its own `B / D` rows with
  `core.select(jax.random.fold_in(key, r), ...)`; no cross-device traffic.

Both return global indices, `int32[b]` sharded along the axis: shard `r`
holds entries `[r b / D, (r + 1) b / D)`. `gather_selected` moves the chosen
examples there.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jest_jax.selection import core

SCOPES = ("global", "local")


def _axis_size(mesh, axis_name):
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh "
                     f"{dict(mesh.shape)}")
  return mesh.shape[axis_name]


def _as_arrays(emb):
  if emb is None:
    return None
  return emb._replace(temperature=jnp.asarray(emb.temperature, jnp.float32),
                      bias=jnp.asarray(emb.bias, jnp.float32))


def _check(learner, reference, *, mesh, axis_name, scope, sub_batch_size,
           method, scoring, n_chunks, loss, refine_sweeps):
  """Global-shape checks; returns (B, number of shards)."""
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r}: use one of {SCOPES}")
  shards = _axis_size(mesh, axis_name)
  size = core.check_models(learner, reference, method=method, scoring=scoring,
                           loss=loss)
  sizes = dict(method=method, n_chunks=n_chunks, refine_sweeps=refine_sweeps,
               loss=loss)
  core.check_sizes(size, sub_batch_size, **sizes)
  if size % shards or sub_batch_size % shards:
    raise ValueError(
        f"B={size} and sub_batch_size={sub_batch_size} must both be divisible "
        f"by the {shards} shards of mesh axis {axis_name!r} (balanced shards)")
  if scope == "local":
    core.check_sizes(size // shards, sub_batch_size // shards, **sizes)
  return size, shards


def sharded_select(key, learner, reference, *, mesh, axis_name="data",
                   scope="global", sub_batch_size, method="joint",
                   scoring="learnability", gain=core.DEFAULT_GAIN,
                   n_chunks=core.DEFAULT_N_CHUNKS, loss="sigmoid",
                   refine_sweeps=0):
  """`core.select` on a super-batch sharded along `axis_name` of `mesh`.

  Works inside or outside `jax.jit`. Inputs may have any sharding (they are
  resharded to rows-along-`axis_name`, scalars replicated).

  Args:
    key: PRNG key, the same on every device (replicated).
    learner, reference: `Embeddings` with global `[B, d]` arrays, or None.
    mesh: a `jax.sharding.Mesh`; other axes than `axis_name` replicate.
    axis_name: the mesh axis the super-batch is split along (`D` shards;
      `B` and `sub_batch_size` must be divisible by `D`).
    scope: "global" (identical to `core.select(key, ...)` on one device) or
      "local" (shard `r` runs `core.select(jax.random.fold_in(key, r), ...)`
      on its own rows with `sub_batch_size // D`).
    sub_batch_size, method, scoring, gain, n_chunks, loss, refine_sweeps:
      as in `core.select` (for "local", `n_chunks` must divide `b / D`).

  Returns:
    `int32[sub_batch_size]` global indices into the super-batch, sharded
    along `axis_name` (shard r holds entries `[r b / D, (r + 1) b / D)`).
  """
  learner, reference = _as_arrays(learner), _as_arrays(reference)
  size, shards = _check(
      learner, reference, mesh=mesh, axis_name=axis_name, scope=scope,
      sub_batch_size=sub_batch_size, method=method, scoring=scoring,
      n_chunks=n_chunks, loss=loss, refine_sweeps=refine_sweeps)
  models = {name: emb for name, emb in (("learner", learner),
                                        ("reference", reference))
            if emb is not None}
  run = _selector(mesh, axis_name, scope, tuple(models), shards=shards,
                  super_batch_size=size, sub_batch_size=int(sub_batch_size),
                  method=method, scoring=scoring, n_chunks=int(n_chunks),
                  loss=loss, refine_sweeps=int(refine_sweeps),
                  block_size=core.DEFAULT_BLOCK_SIZE)
  return run(key, models, jnp.asarray(gain, jnp.float32))


@functools.lru_cache(maxsize=64)
def _selector(mesh, axis_name, scope, model_names, **static):
  """A jitted shard_map per static configuration (eager shard_map would run
  op by op; inside an outer jit this inlines)."""
  rows = PartitionSpec(axis_name)
  model_spec = core.Embeddings(rows, rows, PartitionSpec(), PartitionSpec())
  body = functools.partial(
      _global_body if scope == "global" else _local_body,
      axis_name=axis_name, **static)
  return jax.jit(jax.shard_map(
      body, mesh=mesh,
      in_specs=(PartitionSpec(), {name: model_spec for name in model_names},
                PartitionSpec()),
      out_specs=rows, check_vma=False))


def _local_body(key, models, gain, *, axis_name, shards, super_batch_size,
                sub_batch_size, **static):
  shard = jax.lax.axis_index(axis_name)
  n_local = super_batch_size // shards
  local = core.draw(
      jax.random.fold_in(key, shard), models.get("learner"),
      models.get("reference"), gain, layout=core.OneDevice(n_local),
      sub_batch_size=sub_batch_size // shards, **static)
  return local + (shard * n_local).astype(jnp.int32)


class _Shard(NamedTuple):
  """A layout for `core.draw`: this device holds rows `[r n, (r + 1) n)`."""
  n_rows: int
  axis_name: str
  shards: int

  def to_global(self, values):
    return jax.lax.all_gather(values, self.axis_name, tiled=True)

  def partners(self, models, indices):
    # Each row lives on one shard; the others add exact zeros.
    n_local = self.n_rows // self.shards
    local = indices - jax.lax.axis_index(self.axis_name) * n_local
    owned = (local >= 0) & (local < n_local)
    partners = core.partner_rows(models, jnp.clip(local, 0, n_local - 1))
    return jax.lax.psum(
        tuple(jnp.where(owned[None, :, None], p, 0.0) for p in partners),
        self.axis_name)

  def everyone(self, models):
    return tuple(m._replace(pairs=jax.lax.all_gather(
        m.pairs, self.axis_name, axis=1, tiled=True)) for m in models)


def _global_body(key, models, gain, *, axis_name, shards, super_batch_size,
                 sub_batch_size, **static):
  indices = core.draw(
      key, models.get("learner"), models.get("reference"), gain,
      layout=_Shard(super_batch_size, axis_name, shards),
      sub_batch_size=sub_batch_size, **static)
  per_shard = sub_batch_size // shards
  shard = jax.lax.axis_index(axis_name)
  return jax.lax.dynamic_slice(indices, (shard * per_shard,), (per_shard,))


def gather_selected(super_batch, indices, *, mesh, axis_name="data",
                    scope="global", capacity=None):
  """Moves the selected examples to balanced shards.

  Args:
    super_batch: pytree of arrays with leading axis `B`, split along
      `axis_name` (images, tokens, embeddings, ...).
    indices: `int[b]` global indices from `sharded_select` with the same
      `scope`, sharded along `axis_name`.
    mesh, axis_name: as in `sharded_select`.
    scope: "local" (every index is in its own shard: a local take, no
      traffic) or "global" (any index anywhere: an owner-bucketed
      `all_to_all`; each device sends each of its selected rows to its
      destination shard only, so per-device memory and traffic are
      `O(b / D)` rows).
    capacity: global scope only: rows per (source, destination) pair per
      round of `all_to_all` (static; default `ceil(1.25 b / D^2)`, 1.25
      times the mean of a uniform spread, so a round's send and receive
      buffers hold 2.5 times the output shard). A pair with more rows takes further
      rounds (as many as the fullest pair needs, the same on every device):
      always exact, only slower.

  Returns:
    The pytree with leading axis `b`, sharded along `axis_name`: row `p` is
    super-batch row `indices[p]`.
  """
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r}: use one of {SCOPES}")
  shards = _axis_size(mesh, axis_name)
  sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(super_batch)}
  if len(sizes) != 1:
    raise ValueError(f"super_batch leaves have different leading sizes {sizes}")
  size = sizes.pop()
  sub = jnp.shape(indices)[0]
  if size % shards or sub % shards:
    raise ValueError(f"B={size} and b={sub} must be "
                     f"divisible by the {shards} shards of {axis_name!r}")
  if capacity is None:
    capacity = -(-5 * sub // (4 * shards * shards))
  if not isinstance(capacity, int) or capacity < 1:
    raise ValueError(f"capacity={capacity!r} must be a positive Python int")
  return _gatherer(mesh, axis_name, scope, size // shards,
                   min(capacity, sub // shards))(super_batch, indices)


@functools.lru_cache(maxsize=64)
def _gatherer(mesh, axis_name, scope, n_local, capacity):
  """A jitted shard_map moving selected rows (see `gather_selected`)."""
  rows = PartitionSpec(axis_name)

  def local_body(batch, local_indices):
    shard = jax.lax.axis_index(axis_name)
    mine = local_indices - shard * n_local
    return jax.tree.map(lambda x: jnp.take(x, mine, axis=0), batch)

  def global_body(batch, local_indices):
    shard = jax.lax.axis_index(axis_name)
    shards = jax.lax.axis_size(axis_name)
    per_shard = local_indices.shape[0]
    # Which shard owns each slot's row: [destination, slot] -> source.
    everyone = jax.lax.all_gather(local_indices, axis_name, tiled=True)
    owner = (everyone // n_local).reshape(shards, per_shard)
    # As a source: the rank of each of my rows among those a destination
    # takes from me, in slot order; as a destination: the same for my slots.
    mine = owner == shard
    send_rank = jnp.cumsum(mine, axis=1) - 1
    send_row = (everyone.reshape(shards, per_shard) - shard * n_local)
    source = owner[shard]
    by_source = source[:, None] == jnp.arange(shards)
    recv_rank = jnp.sum((jnp.cumsum(by_source, axis=0) - 1) * by_source,
                        axis=1)
    fullest = jax.lax.pmax(jnp.max(jnp.sum(mine, axis=1)), axis_name)
    n_rounds = -(-fullest // capacity)
    wide = jax.tree.map(
        lambda x: x.astype(jnp.int8) if x.dtype == jnp.bool_ else x, batch)

    def one_round(carry):
      step, out = carry
      first = step * capacity
      # Send table [destination, capacity]: my rows of this round's ranks.
      position = jnp.where(mine & (send_rank >= first) &
                           (send_rank < first + capacity),
                           send_rank - first, capacity)  # capacity: dropped.
      table = jnp.zeros((shards, capacity), jnp.int32).at[
          jnp.arange(shards)[:, None], position].set(
              jnp.clip(send_row, 0, n_local - 1), mode="drop")
      arrived = (recv_rank >= first) & (recv_rank < first + capacity)
      slot = source * capacity + jnp.clip(recv_rank - first, 0, capacity - 1)

      def move(x, y):
        sent = jnp.take(x, table.reshape(-1), axis=0).reshape(
            (shards, capacity) + x.shape[1:])
        received = jax.lax.all_to_all(sent, axis_name, 0, 0, tiled=True)
        received = received.reshape((shards * capacity,) + x.shape[1:])
        keep = arrived.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(keep, jnp.take(received, slot, axis=0), y)

      return step + 1, jax.tree.map(move, wide, out)

    empty = jax.tree.map(
        lambda x: jnp.zeros((per_shard,) + x.shape[1:], x.dtype), wide)
    _, out = jax.lax.while_loop(lambda c: c[0] < n_rounds, one_round,
                                (jnp.int32(0), empty))
    return jax.tree.map(lambda y, x: y.astype(x.dtype), out, batch)

  return jax.jit(jax.shard_map(
      local_body if scope == "local" else global_body, mesh=mesh,
      in_specs=(rows, rows), out_specs=rows, check_vma=False))
