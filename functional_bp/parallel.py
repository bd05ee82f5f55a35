"""Data parallelism on JAX's own machinery: a `Mesh`, `jax.shard_map` and `lax.pmean`.

The mini-batch is split across the devices of one mesh axis; each device computes the
hand-written mean gradient of its shard, `lax.pmean` averages them (equal shards, so
this is the mean over the whole mini-batch), and params stay replicated. The same code
runs on one CPU, several GPUs, a TPU slice, or several hosts after
`jax.distributed.initialize()`, where `jax.devices()` spans every host.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from functional_bp._options import (
    STATIC,
    ActivationArg,
    CostArg,
    Options,
    prepare,
    with_options_doc,
)
from functional_bp._validation import (
    check_int,
    check_key,
    check_values,
    optional_count,
    optional_non_negative,
    positive,
)
from functional_bp.backward import mean_value_and_grad
from functional_bp.params import Layer, Params
from functional_bp.training import check_l2, sgd_update

Array = jax.Array


def data_mesh(num_devices: Optional[int] = None, axis: str = "data") -> Mesh:
    """A one-axis `Mesh` over the first ``num_devices`` devices (default: all of them)."""
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else check_int(num_devices, "num_devices")
    if num_devices > len(devices):
        raise ValueError(
            f"Expected num_devices from 1 to {len(devices)} (the devices there are), got "
            f"{num_devices} instead"
        )
    return Mesh(np.array(devices[:num_devices]), (axis,))


def _check_divisible(mesh: Mesh, axis: str, batch: int) -> None:
    if axis not in mesh.shape:
        raise ValueError(f"Expected mesh to have an axis {axis!r}, it has {tuple(mesh.shape)}")
    if batch % mesh.shape[axis]:
        raise ValueError(
            f"A mini-batch of {batch} examples does not divide across the "
            f"{mesh.shape[axis]} devices of mesh axis {axis!r}"
        )


def _sharded_mean_grad(mesh: Mesh, axis: str, params, xs, ys, opts: Options) -> list[Layer]:
    """The core's mean gradient of each device's shard, averaged over ``axis`` with
    `lax.pmean` (equal shards, so the mean over the whole mini-batch); replicated."""
    _check_divisible(mesh, axis, xs.shape[0])

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis)),
        out_specs=PartitionSpec(),
    )
    def sharded(params, xs, ys):
        return jax.lax.pmean(mean_value_and_grad(params, xs, ys, opts)[1], axis)

    return sharded(params, xs, ys)


@functools.partial(jax.jit, static_argnames=("mesh", "axis") + STATIC)
@with_options_doc
def data_parallel_grad(
    mesh: Mesh,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    axis: str = "data",
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """`grad` with the mini-batch sharded over ``mesh``'s ``axis``; replicated result.

    Args:
      mesh: a `jax.sharding.Mesh`, for example `data_mesh()`.
      params: a list of `Layer`, replicated.
      xs: shape (batch, n_in); batch must divide across the devices of ``axis``.
      ys: shape (batch, n_out).
      axis: the mesh axis the batch is split over.
      {options}

    Raises:
      ValueError: the batch does not divide across the devices of ``axis``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _sharded_mean_grad(mesh, axis, params, xs, ys, opts)


@check_values(eta=positive, lmbda=optional_non_negative, n=optional_count)
@functools.partial(jax.jit, static_argnames=("mesh", "axis") + STATIC)
@with_options_doc
def data_parallel_sgd_step(
    mesh: Mesh,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    axis: str = "data",
    lmbda: Optional[float] = None,
    n: Optional[int] = None,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """`sgd_step` with the mini-batch sharded over ``mesh``; the same result as one device.

    Args:
      mesh, params, xs, ys, axis: as for `data_parallel_grad`.
      eta, lmbda, n: as for `sgd_step`.
      {options}

    Raises:
      ValueError: the batch does not divide across the devices of ``axis``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    check_l2(lmbda, n)
    grads = _sharded_mean_grad(mesh, axis, params, xs, ys, opts)
    return sgd_update(params, grads, eta, lmbda, n)


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "opts"))
def _sharded_steps(mesh, axis, params, xs_batches, ys_batches, eta, lmbda, n, opts):
    """`sgd_step` on each (batch, n_in) slice of the leading axis, batches sharded."""

    def body(params, batch):
        grads = _sharded_mean_grad(mesh, axis, params, *batch, opts)
        return sgd_update(params, grads, eta, lmbda, n), None

    return jax.lax.scan(body, params, (xs_batches, ys_batches))[0]


def _global_batches(mesh, axis, data, indices):
    """The global array ``data[indices]`` (indices of shape (steps, batch)), sharded over
    ``axis`` along the batch: each process gathers only the rows of its own devices."""
    sharding = NamedSharding(mesh, PartitionSpec(None, axis))
    shape = (*indices.shape, data.shape[1])
    return jax.make_array_from_callback(shape, sharding, lambda index: data[indices[index[:2]]])


@check_values(key=check_key, eta=positive, lmbda=optional_non_negative, n=optional_count)
@with_options_doc
def data_parallel_epoch(
    mesh: Mesh,
    key: Array,
    params: Params,
    xs,
    ys,
    eta: float,
    *,
    batch_size: int,
    axis: str = "data",
    lmbda: Optional[float] = None,
    n: Optional[int] = None,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """`train_epoch` with every mini-batch split over the devices of ``mesh``, which may
    span processes (``jax.distributed.initialize``): the same shuffle on every process
    from ``key``, each process gathering only its devices' part of each mini-batch, and
    each step's gradient averaged across devices (`lax.pmean`): the result equals one
    process's `train_epoch` on the whole data, up to the order of floating-point sums.

    Args:
      mesh: a `jax.sharding.Mesh` over the devices of every process (`data_mesh()`).
      key: the shuffle's key, the same on every process.
      params: a list of `Layer`, the same on every process.
      xs, ys: the whole training set (NumPy arrays), the same on every process.
      eta, lmbda, n: as for `train_epoch`; ``n`` defaults to the number of examples.
      batch_size: the global mini-batch; it, and a last partial mini-batch, must divide
        across the devices of ``axis``.
      axis: the mesh axis the mini-batches are split over.
      {options}

    Returns:
      The params after the epoch, replicated over ``mesh``.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    batch_size = check_int(batch_size, "batch_size")
    num_examples = xs.shape[0]
    n = num_examples if n is None else n
    _check_divisible(mesh, axis, batch_size)
    _check_divisible(mesh, axis, num_examples % batch_size)
    xs, ys = np.asarray(xs), np.asarray(ys)
    order = np.asarray(jax.random.permutation(key, num_examples))
    num_full = num_examples // batch_size
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(jax.tree.map(np.asarray, list(params)), replicated)
    pieces = [order[: num_full * batch_size].reshape(num_full, batch_size)]
    if num_examples % batch_size:  # network.py's last, smaller mini-batch
        pieces.append(order[num_full * batch_size :][None])
    for indices in pieces:
        xb, yb = (_global_batches(mesh, axis, data, indices) for data in (xs, ys))
        params = _sharded_steps(mesh, axis, params, xb, yb, eta, lmbda, n, opts)
    return params
