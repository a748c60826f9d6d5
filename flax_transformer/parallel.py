"""Data parallelism: the same train and eval steps on one device, under `jax.pmap`, or on a mesh.

    parallel = DataParallel("mesh", model_config=config)      # or "pmap", or "single"
    state = parallel.put_state(create_train_state(config, optimizer, key))
    for batch in batches:                                     # host numpy dicts
        state, metrics = parallel.train_step(state, parallel.put_batch(batch))
    summarize_metrics(metrics)                                # metric sums -> means
    checkpoint(parallel.get_state(state))                     # one plain, unreplicated copy

Three paths, chosen by name:

    "mesh"    `jax.jit` over a `jax.sharding.Mesh` of all devices with one axis "data". The batch
              is sharded along its first dimension (`NamedSharding(mesh, P("data"))`), the state
              is replicated (`NamedSharding(mesh, P())`), and the step is the single-device
              `train_step` itself (axis_name=None): XLA's SPMD partitioner splits the batch work
              and inserts the all-reduces of the gradients and metric sums. This is what JAX
              recommends today.
    "pmap"    `jax.pmap` over the local devices with axis name "batch": the state carries a
              leading device axis (one replica per device), the batch is reshaped to
              [devices, per_device_batch, ...], and `train_step(..., axis_name="batch")` sums
              token counts, gradients and metrics over devices itself (`lax.psum`). pmap is in
              maintenance mode (recent jax implements it with jit + shard_map; the docs point to
              jit with shardings, or shard_map); it stays because much existing code uses it.
    "single"  plain `jax.jit` on one device ("none" is an alias): the reference.

All three give the same numbers, up to float32 summation order. The loss is normalised by the
number of non-pad target tokens of the *global* batch, not per device: under pmap the token
count and the gradients are psummed before the update, on the mesh the sums run over the whole
(sharded) global batch. Devices that hold more padding therefore weigh exactly what they would
weigh on one device, and every replica applies the update the single-device step would apply.
Dropout differs by design under pmap only: each device folds its index into the dropout key, so
devices draw different masks. On the mesh the masks are those of the single-device step,
because jax's threefry generator is partitionable (`jax_threefry_partitionable`, on by default
in recent jax): the random bits of an array do not depend on how it is sharded.

Gradient accumulation (`micro_batches=k`, see `training.train_step`): every device splits the
rows it holds into k strided micro-batches, so no data moves for the split. Under pmap this is
the per-device step. On the mesh it runs under `jax.shard_map` with axis name "data", so that
each device scans over its own micro-batches and the gradients are all-reduced once, after the
scan (the partitioner, given the plain step, all-reduces the replicated accumulator inside the
scan, once per micro-batch); the dropout masks are then per device, as under pmap. With k = 1
the mesh step is the plain single-device step as described above.

Steps are compiled once per `DataParallel` (static shapes: feed batches of one shape), the
state argument of the train step is donated (its buffers are reused for the new state: do not
use a state after passing it to `train_step`), and nothing in the step path reads back to the
host. Metrics are returned as scalar metric sums that `training.summarize_metrics` takes as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flax_transformer import checks, training
from flax_transformer.config import TransformerConfig

Array = jax.Array
HostBatch = Mapping[str, np.ndarray]
DeviceBatch = dict[str, Array]
Metrics = dict[str, Array]

MODES = ("single", "pmap", "mesh")
_MODE_ALIASES = {"none": "single"}
PMAP_AXIS = "batch"  # the pmap axis name that train_step / eval_step psum over
MESH_AXIS = "data"  # the mesh axis that the batch dimension is sharded along
REQUIRED_BATCH_KEYS = ("source", "decoder_input", "target")


def _data_mesh(devices: Sequence[jax.Device]) -> Mesh:
    """A one-axis mesh ("data") over `devices`.

    The axis type is Auto: jit then partitions the single-device program and inserts the
    collectives itself (`jax.make_mesh` defaults to Explicit sharding in recent jax, which would
    make sharding part of every array's type and ask the step code to spell out reshardings).
    """
    auto = (jax.sharding.AxisType.Auto,)
    if hasattr(jax, "make_mesh"):
        return jax.make_mesh((len(devices),), (MESH_AXIS,), axis_types=auto, devices=devices)
    return Mesh(np.array(devices), (MESH_AXIS,))


class DataParallel:
    """Places states and batches on devices and runs the compiled train / eval steps there.

    Args:
      mode: "mesh" (jit + sharding), "pmap", or "single" (alias "none").
      model_config: the model's config; `eval_step` needs it, and its `pad_id` marks the target
        positions that carry no loss in both steps.
      label_smoothing: epsilon of the smoothed loss, for both steps (paper: 0.1).
      devices: the devices to use; default all devices ("mesh"), the local devices ("pmap"),
        or the first device ("single").
      micro_batches: gradient accumulation (`training.train_step`): the train step computes its
        batch as this many strided micro-batches, one after another, and applies one update,
        the update of the whole batch. Training batches then need rows divisible by
        num_devices * micro_batches; eval batches only by num_devices. Under the mesh every
        device keeps its own rows in every micro-batch; under pmap each device splits its rows.

    Attributes:
      train_step: (state, batch) -> (state, metrics); the state is donated.
      eval_step: (state, batch) -> metric sums of the deterministic model.
      num_devices: how many devices share each batch.
    """

    def __init__(
        self,
        mode: str,
        *,
        model_config: TransformerConfig,
        label_smoothing: float = 0.1,
        devices: Sequence[jax.Device] | None = None,
        micro_batches: int = 1,
    ) -> None:
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in MODES:
            raise ValueError(
                f"unknown data-parallel mode {mode!r}; choose one of {list(MODES)} "
                "(or 'none', an alias of 'single')"
            )
        self.mode = mode
        self.model_config = model_config
        self.label_smoothing = label_smoothing
        self.micro_batches = checks.check_micro_batches(micro_batches)
        train_fn = functools.partial(
            training.train_step,
            pad_id=model_config.pad_id,
            label_smoothing=label_smoothing,
            micro_batches=micro_batches,
        )
        eval_fn = functools.partial(
            training.eval_step, config=model_config, label_smoothing=label_smoothing
        )

        if mode == "single":
            self.devices: tuple[jax.Device, ...] = (devices[0] if devices else jax.devices()[0],)
            self.train_step: Callable[..., tuple[Any, Metrics]] = jax.jit(
                train_fn, donate_argnums=0
            )
            self.eval_step: Callable[..., Metrics] = jax.jit(eval_fn)

        elif mode == "mesh":
            self.devices = tuple(devices) if devices else tuple(jax.devices())
            self.mesh = _data_mesh(self.devices)
            self._replicated = NamedSharding(self.mesh, P())
            self._batch_sharding = NamedSharding(self.mesh, P(MESH_AXIS))
            # The single-device steps, unchanged: in/out shardings tell XLA where the data lives
            # and the partitioner adds the all-reduces. A sharding given for a whole subtree
            # (the state, the batch) applies to every array in it.
            mesh_train_fn = train_fn
            if micro_batches > 1:
                # Accumulation under shard_map, written per device as under pmap: each device
                # scans over the micro-batches of its own rows and the gradients are psummed
                # once, after the scan. Given the plain step, the partitioner keeps the
                # accumulated gradient replicated and so all-reduces it inside the scan, once
                # per micro-batch (k times the gradient traffic; seen in the compiled HLO).
                mesh_train_fn = jax.shard_map(
                    functools.partial(train_fn, axis_name=MESH_AXIS),
                    mesh=self.mesh,
                    in_specs=(P(), P(MESH_AXIS)),
                    out_specs=(P(), P()),
                    # The scan's zero gradient starts device-invariant and the body's is
                    # per-device; the outputs are psummed, hence the same on every device.
                    check_vma=False,
                )
            self.train_step = jax.jit(
                mesh_train_fn,
                in_shardings=(self._replicated, self._batch_sharding),
                out_shardings=(self._replicated, self._replicated),
                donate_argnums=0,
            )
            self.eval_step = jax.jit(
                eval_fn,
                in_shardings=(self._replicated, self._batch_sharding),
                out_shardings=self._replicated,
            )

        else:  # pmap
            self.devices = tuple(devices) if devices else tuple(jax.local_devices())
            # Arrays with a leading device axis, one slice per device, in pmap's device order.
            self._stacked = NamedSharding(Mesh(np.array(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS))
            # Metric sums are psummed inside the step, so every device holds the same values:
            # out_axes=None returns one copy without the device axis (no host read-back), which
            # is what summarize_metrics expects. The state keeps its device axis (out_axes 0).
            pmap_devices = {"devices": list(devices)} if devices else {}
            self.train_step = jax.pmap(
                functools.partial(train_fn, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                out_axes=(0, None),
                donate_argnums=0,
                **pmap_devices,
            )
            self.eval_step = jax.pmap(
                functools.partial(eval_fn, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                out_axes=None,
                **pmap_devices,
            )
            # put_state stacks the replicas with pmap itself (same axis name, so same layout as
            # train_step's output state): jax < 0.8 on one device would copy a jit-stacked state
            # at the first step and donate only the copy. pmap needs a mapped argument: the
            # device indices, unused.
            self._broadcast = jax.pmap(
                lambda _, tree: tree, axis_name=PMAP_AXIS, in_axes=(0, None), **pmap_devices
            )

    @property
    def num_devices(self) -> int:
        """The number of devices a batch is split over (1 for "single")."""
        return len(self.devices)

    def __repr__(self) -> str:
        return (
            f"DataParallel({self.mode!r}, num_devices={self.num_devices}, "
            f"micro_batches={self.micro_batches})"
        )

    # ----------------------------------------------------------------------------------------
    # State
    # ----------------------------------------------------------------------------------------
    def put_state(self, state: Any) -> Any:
        """The state (or any pytree of arrays) placed for the steps of this mode.

        "single": on the device. "mesh": replicated on every device of the mesh (in a multi-host
        run every process must pass the same values). "pmap": stacked along a new leading
        device axis, one replica per device. Pass a plain, unreplicated state, e.g. a fresh
        `create_train_state` or a restored checkpoint.
        """
        # Copy first: `train_step` donates the placed state, and device_put may hand back the
        # caller's own buffers (it does for the replica on the device the state is already on),
        # which donation would then delete under the caller's feet.
        owned = jax.tree.map(jnp.copy, state)
        if self.mode == "single":
            return jax.device_put(owned, self.devices[0])
        if self.mode == "mesh":
            return jax.device_put(owned, self._replicated)
        # pmap: copy the state to every device first, then let each device broadcast its own
        # copy to its [1, ...] slice of the stacked array. (Stacking n copies on the host or on
        # one device, as flax.jax_utils.replicate does, briefly needs n times the memory there.)
        everywhere = NamedSharding(self._stacked.mesh, P())
        return self._broadcast(np.arange(self.num_devices), jax.device_put(owned, everywhere))

    def get_state(self, state: Any) -> Any:
        """One plain copy of a placed state, on one device: for checkpoints and evaluation.

        Under pmap this drops the device axis (takes the first replica); elsewhere it copies
        the replica held by the first device. The copy owns its buffers, so it stays valid
        after `train_step` donates `state`. No host read-back: `jax.device_get` it for numpy.
        In a multi-process run each process gets its own local copy: right for decoding, not
        for orbax, which must be given the global (replicated) arrays by every process.
        """
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x.addressable_data(0)[0], state)
        return jax.tree.map(lambda x: jnp.copy(x.addressable_data(0)), state)

    # ----------------------------------------------------------------------------------------
    # Batches
    # ----------------------------------------------------------------------------------------
    def row_multiple(self, *, train: bool = True) -> int:
        """What a global batch's row count must be a multiple of: num_devices, times
        micro_batches for a training batch."""
        return self.num_devices * (self.micro_batches if train else 1)

    def check_batch_size(self, batch_size: int, *, train: bool = True) -> None:
        """Raise ValueError unless a global batch of `batch_size` rows splits evenly: over the
        devices, and for a training batch (`train`) also into `micro_batches` per device."""
        n = self.num_devices
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        multiple = self.row_multiple(train=train)
        if batch_size % multiple != 0:
            divisor = f"the {n} devices"
            if multiple != n:
                divisor += f" x {self.micro_batches} micro-batches"
            raise ValueError(
                f"batch_size {batch_size} is not divisible by {divisor}; use a multiple "
                f"of {multiple} (e.g. {-(-batch_size // multiple) * multiple})"
            )

    def put_batch(self, batch: HostBatch, *, train: bool = True) -> DeviceBatch:
        """Check a host batch (dict of numpy arrays, rows first) and place it for the steps.

        Every array must have the same leading (batch) dimension, divisible by `num_devices`,
        and for a batch of the train step (`train`, the default) by num_devices *
        micro_batches; pass train=False for eval batches (multi-host mesh: the rows of this
        process; together they make the global batch).
        "single": copied to the device. "mesh": sharded along rows over the mesh. "pmap":
        reshaped to [devices, rows_per_device, ...], slice i on device i.
        """
        arrays = {key: np.asarray(value) for key, value in batch.items()}
        missing = [key for key in REQUIRED_BATCH_KEYS if key not in arrays]
        if missing:
            raise ValueError(f"the batch has no {', '.join(missing)} (keys: {sorted(arrays)})")
        scalars = [key for key, value in arrays.items() if value.ndim == 0]
        if scalars:
            raise ValueError(f"batch arrays need a leading batch dimension; {scalars} are scalars")
        sizes = {key: value.shape[0] for key, value in arrays.items()}
        if len(set(sizes.values())) != 1:
            shapes = ", ".join(f"{key} {arrays[key].shape}" for key in sorted(arrays))
            raise ValueError(
                f"all batch arrays must have the same leading (batch) dimension, got {shapes}"
            )
        # The global batch is the rows of every process: make_array_from_process_local_data
        # puts the processes' rows side by side (one process outside multi-host runs).
        processes = jax.process_count() if self.mode == "mesh" else 1
        self.check_batch_size(sizes["target"] * processes, train=train)

        if self.mode == "single":
            return jax.device_put(arrays, self.devices[0])
        if self.mode == "mesh":
            # Single process: this is device_put with the row sharding. Multi-host: each
            # process passes only its own rows (global batch / process count, for the devices it
            # owns) and this assembles the global array; device_put would instead need every
            # process to hold the whole global batch.
            return {
                key: jax.make_array_from_process_local_data(self._batch_sharding, value)
                for key, value in arrays.items()
            }
        n = self.num_devices
        stacked = {key: value.reshape(n, -1, *value.shape[1:]) for key, value in arrays.items()}
        return jax.device_put(stacked, self._stacked)


__all__ = ["MESH_AXIS", "MODES", "PMAP_AXIS", "DataParallel"]
