"""The gradient check of a random network, with the time of one manual gradient against
``jax.jit(jax.grad)``: what ``functional_bp gradcheck`` and ``demo`` report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from functional_bp.gradcheck import GradCheck, check_gradients
from functional_bp.gradients import grad, loss
from functional_bp.network import Network
from functional_bp.params import init_mlp
from functional_bp.timing import interleaved_medians

__all__ = ["GradientReport", "gradient_check", "random_batch"]


class GradientReport(NamedTuple):
    """`gradient_check`'s result.

    Attributes:
      check: the `gradcheck.GradCheck` (``.ok``; printed, a table).
      manual_seconds: median seconds of one hand-written mean gradient (`grad`).
      autodiff_seconds: the same for ``jax.jit(jax.grad(loss))``.
    """

    check: GradCheck
    manual_seconds: float
    autodiff_seconds: float


def random_batch(key: jax.Array, sizes: Sequence[int], batch: int, dtype) -> tuple:
    """Inputs uniform in [0, 1) like pixels, and one-hot targets of random classes."""
    x_key, y_key = jax.random.split(key)
    xs = jax.random.uniform(x_key, (batch, sizes[0]), dtype)
    labels = jax.random.randint(y_key, (batch,), 0, sizes[-1])
    return xs, jax.nn.one_hot(labels, sizes[-1], dtype=dtype)


def gradient_check(
    sizes: Sequence[int],
    *,
    batch_size: int = 10,
    seed: int = 0,
    init: str = "normal",
    dtype=jnp.float32,
    net: Network = Network(),
    repeats: int = 25,
) -> GradientReport:
    """Checks `grad` against ``jax.grad`` and finite differences (`check_gradients`) on a
    random network and batch, then times both gradients (medians of ``repeats``
    interleaved calls).

    The params come from ``init_key, data_key = jax.random.split(jax.random.key(seed))``:
    ``init_mlp(init_key, sizes, init=init, dtype=dtype)``, the batch from ``data_key``.
    """
    init_key, data_key = jax.random.split(jax.random.key(seed))
    params = init_mlp(init_key, sizes, init=init, dtype=dtype)
    xs, ys = random_batch(data_key, sizes, batch_size, dtype)
    result = check_gradients(params, xs, ys, net=net)
    autodiff = jax.jit(jax.grad(lambda p: loss(p, xs, ys, net=net)))
    times = interleaved_medians(
        {"manual": lambda: grad(params, xs, ys, net=net), "jax.grad": lambda: autodiff(params)},
        repeats=repeats,
        min_time=0.01,
    )
    return GradientReport(result, times["manual"], times["jax.grad"])
