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
from jax.sharding import Mesh, PartitionSpec

from functional_bp._options import STATIC, prepare
from functional_bp.activations import Activation
from functional_bp.backward import grad
from functional_bp.costs import Cost
from functional_bp.params import Layer, Params
from functional_bp.training import check_regularisation, sgd_update

Array = jax.Array


def data_mesh(num_devices: Optional[int] = None, axis: str = "data") -> Mesh:
    """A one-axis `Mesh` over the first ``num_devices`` devices (default: all of them)."""
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else num_devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"Expected 1 to {len(devices)} devices, got {num_devices} instead")
    return Mesh(np.array(devices[:num_devices]), (axis,))


def _check_divisible(mesh: Mesh, axis: str, batch: int) -> None:
    if axis not in mesh.shape:
        raise ValueError(f"Expected mesh to have an axis {axis!r}, it has {tuple(mesh.shape)}")
    if batch % mesh.shape[axis]:
        raise ValueError(
            f"A mini-batch of {batch} examples does not divide across the "
            f"{mesh.shape[axis]} devices of mesh axis {axis!r}"
        )


@functools.partial(jax.jit, static_argnames=("mesh", "axis") + STATIC)
def data_parallel_grad(
    mesh: Mesh,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    axis: str = "data",
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """`grad` with the mini-batch sharded over ``mesh``'s ``axis``; replicated result.

    Raises:
      ValueError: the batch does not divide across the devices of ``axis``.
    """
    prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    _check_divisible(mesh, axis, xs.shape[0])
    options = dict(activation=activation, output_activation=output_activation, cost=cost)

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis)),
        out_specs=PartitionSpec(),
    )
    def sharded(params, xs, ys):
        return jax.lax.pmean(grad(params, xs, ys, **options), axis)

    return sharded(params, xs, ys)


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "lmbda", "n") + STATIC)
def data_parallel_sgd_step(
    mesh: Mesh,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    axis: str = "data",
    lmbda: float = 0.0,
    n: Optional[int] = None,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """`sgd_step` with the mini-batch sharded over ``mesh``; the same result as one device.

    Raises:
      ValueError: the batch does not divide across the devices of ``axis``.
    """
    prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    _check_divisible(mesh, axis, xs.shape[0])
    check_regularisation(lmbda, n)
    options = dict(activation=activation, output_activation=output_activation, cost=cost)
    replicated = PartitionSpec()

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(replicated, PartitionSpec(axis), PartitionSpec(axis), replicated),
        out_specs=replicated,
    )
    def sharded(params, xs, ys, eta):
        grads = jax.lax.pmean(grad(params, xs, ys, **options), axis)
        return sgd_update(params, grads, eta, lmbda, n)

    return sharded(params, xs, ys, eta)
