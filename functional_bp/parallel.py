"""Data parallelism on JAX's own machinery: a `Mesh`, `jax.shard_map` and `lax.pmean`.

The mini-batch is split across the devices of one mesh axis; each device computes the
hand-written mean gradient of its shard, `lax.pmean` averages them (equal shards, so
this is the mean over the whole mini-batch), and params stay replicated. The same code
runs on one CPU, several GPUs, a TPU slice, or several hosts after
`jax.distributed.initialize()`, where `jax.devices()` spans every host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from functional_bp import core, training
from functional_bp._validation import (
    check_int,
    check_key,
    check_values,
    optional_non_negative,
    positive,
)
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = ["ShardedGradient", "data_mesh", "data_parallel_epoch", "data_parallel_grad"]


def data_mesh(num_devices: Optional[int] = None, axis: str = "data") -> Mesh:
    """A one-axis `Mesh` over the first ``num_devices`` devices (default: all of them).

    Examples:
      >>> mesh = fbp.parallel.data_mesh(1)
      >>> mesh.axis_names, mesh.devices.shape
      (('data',), (1,))
    """
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else check_int(num_devices, "num_devices")
    if num_devices > len(devices):
        raise ValueError(
            f"Expected num_devices from 1 to {len(devices)} (the devices there are), got "
            f"{num_devices} instead"
        )
    return Mesh(np.array(devices[:num_devices]), (axis,))


def _check_divisible(mesh: Mesh, axis: str, batch: int) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"Expected mesh to be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ValueError(f"Expected mesh to have an axis {axis!r}, it has {tuple(mesh.shape)}")
    if batch % mesh.shape[axis]:
        raise ValueError(
            f"A mini-batch of {batch} examples does not divide across the "
            f"{mesh.shape[axis]} devices of mesh axis {axis!r}"
        )


@core.gradient_class
class ShardedGradient(core.Gradient):
    """Backprop's mean gradient with the mini-batch split over ``mesh``'s ``axis``: each
    device computes the mean gradient of its shard, `lax.pmean` averages them (equal
    shards, so the mean over the whole mini-batch); params and result replicated. Any
    layer type (`functional_bp.layers`); a network with dropout draws each shard's masks
    from the step's key folded with the shard's index.

    Attributes:
      mesh: a `jax.sharding.Mesh`, for example `data_mesh()` (static).
      axis: the mesh axis the batch is split over (static).

    Examples:
      >>> gradient = fbp.parallel.ShardedGradient(fbp.parallel.data_mesh(1))
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> grads = gradient(None, Network(), params, jnp.ones((4, 3)), jnp.zeros((4, 2)))
      >>> [g.w.shape for g in grads]
      [(2, 3)]
    """

    mesh: Mesh = dataclasses.field(metadata={"static": True})
    axis: str = dataclasses.field(default="data", metadata={"static": True})

    layered = True  # any layer type: the batch axis is split, whatever the example's shape

    def __call__(self, key, net, params, xs, ys):
        # Dropout: each shard draws its masks from the key folded with its index.
        drop = key if net.has_dropout else None
        replicated = PartitionSpec()

        @functools.partial(
            jax.shard_map,
            mesh=self.mesh,
            in_specs=(replicated, PartitionSpec(self.axis), PartitionSpec(self.axis), replicated),
            out_specs=replicated,
        )
        def sharded(params, xs, ys, drop):
            if drop is not None:
                drop = jax.random.fold_in(drop, jax.lax.axis_index(self.axis))
            grads = core.mean_value_and_grad(net, params, xs, ys, key=drop)[1]
            return jax.lax.pmean(grads, self.axis)

        return sharded(params, xs, ys, drop)

    def check(self, net, params, xs, ys) -> None:
        core.check(net, params, xs, ys, layered=True)
        _check_divisible(self.mesh, self.axis, xs.shape[0])


@jit_with_net(static=("mesh", "axis"), half_in_float32=True)
def data_parallel_grad(
    mesh: Mesh,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    axis: str = "data",
    net: Network = Network(),
) -> list[Layer]:
    """`grad` with the mini-batch sharded over ``mesh``'s ``axis``; replicated result.

    Args:
      mesh: a `jax.sharding.Mesh`, for example `data_mesh()`.
      params: a list of `Layer`, replicated.
      xs: shape (batch, n_in); batch must divide across the devices of ``axis``.
      ys: shape (batch, n_out).
      axis: the mesh axis the batch is split over.
      net: the `Network`.

    Raises:
      ValueError: the batch does not divide across the devices of ``axis``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> grads = fbp.parallel.data_parallel_grad(fbp.parallel.data_mesh(1), params, xs, ys)
      >>> bool(jnp.allclose(grads[0].w, grad(params, xs, ys)[0].w))
      True
    """
    gradient = ShardedGradient(mesh, axis)
    gradient.check(net, params, xs, ys)
    return gradient(None, net, params, xs, ys)


@jit_with_net(static=("optimizer",))
def _steps(optimizer, gradient, params, opt_state, xs_batches, ys_batches, *, net):
    """`training.train_step` on each (batch, n_in) slice of the leading axis."""

    def body(carry, batch):
        return training.train_step(
            None, optimizer, *carry, *batch, gradient=gradient, net=net
        ), None

    return jax.lax.scan(body, (params, opt_state), (xs_batches, ys_batches))[0]


def _global_batches(mesh, axis, data, indices):
    """The global array ``data[indices]`` (indices of shape (steps, batch)), sharded over
    ``axis`` along the batch: each process gathers only the rows of its own devices."""
    sharding = NamedSharding(mesh, PartitionSpec(None, axis))
    shape = (*indices.shape, *data.shape[1:])  # targets may be labels, one per example
    return jax.make_array_from_callback(shape, sharding, lambda index: data[indices[index[:2]]])


@check_values(key=check_key, learning_rate=positive, weight_decay=optional_non_negative)
def data_parallel_epoch(
    key: Array,
    mesh: Mesh,
    params: Params,
    xs,
    ys,
    learning_rate: float,
    *,
    batch_size: int,
    axis: str = "data",
    weight_decay: Optional[float] = None,
    net: Network = Network(),
) -> list[Layer]:
    """`train_epoch` with every mini-batch split over the devices of ``mesh``, which may
    span processes (``jax.distributed.initialize``): the same shuffle on every process
    from ``key``, each process gathering only its devices' part of each mini-batch, and
    each step a `training.train_step` with `ShardedGradient`: the result equals one
    process's `train_epoch` on the whole data, up to the order of floating-point sums.

    Args:
      key: the shuffle's key, the same on every process.
      mesh: a `jax.sharding.Mesh` over the devices of every process (`data_mesh()`).
      params: a list of `Layer`, the same on every process.
      xs: the whole training set's inputs (a NumPy array), the same on every process.
      ys: its targets, likewise.
      learning_rate: eta, as for `train_epoch`.
      weight_decay: as for `train_epoch`.
      batch_size: the global mini-batch; it, and a last partial mini-batch, must divide
        across the devices of ``axis``.
      axis: the mesh axis the mini-batches are split over.
      net: the `Network`.

    Returns:
      The params after the epoch, replicated over ``mesh``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = np.ones((8, 3)), np.zeros((8, 2))
      >>> new = fbp.parallel.data_parallel_epoch(
      ...     jax.random.key(1), fbp.parallel.data_mesh(1), params, xs, ys, 0.5, batch_size=4)
      >>> [layer.w.shape for layer in new]
      [(2, 3)]
    """
    core.check(net, params, xs, ys)
    batch_size = check_int(batch_size, "batch_size")
    num_examples = xs.shape[0]
    _check_divisible(mesh, axis, batch_size)
    _check_divisible(mesh, axis, num_examples % batch_size)
    xs, ys = np.asarray(xs), np.asarray(ys)
    order = np.asarray(jax.random.permutation(key, num_examples))
    num_full = num_examples // batch_size
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(jax.tree.map(np.asarray, list(params)), replicated)
    optimizer = _sgd(float(learning_rate), None if weight_decay is None else float(weight_decay))
    opt_state = optimizer.init(params)
    gradient = ShardedGradient(mesh, axis)
    pieces = [order[: num_full * batch_size].reshape(num_full, batch_size)]
    if num_examples % batch_size:  # network.py's last, smaller mini-batch
        pieces.append(order[num_full * batch_size :][None])
    for indices in pieces:
        xb, yb = (_global_batches(mesh, axis, data, indices) for data in (xs, ys))
        params, opt_state = _steps(optimizer, gradient, params, opt_state, xb, yb, net=net)
    return params


@functools.lru_cache(maxsize=64)  # one optimizer, so one compilation, per setting
def _sgd(learning_rate: float, weight_decay: Optional[float]) -> optax.GradientTransformation:
    return training.sgd(learning_rate, weight_decay)
