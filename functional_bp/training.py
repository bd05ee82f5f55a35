"""Training with the hand-written gradients: network.py's SGD as pure functions, optax.

network.py's ``update_mini_batch`` becomes `sgd_step`, its epoch loop `train_epoch`:
shuffle with an explicit key, cut mini-batches, and run every step inside one jitted
`jax.lax.scan`, so no Python runs between steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from functional_bp._options import STATIC, prepare
from functional_bp.activations import Activation
from functional_bp.backward import grad, loss
from functional_bp.costs import Cost
from functional_bp.forward import feedforward
from functional_bp.params import Layer, Params

Array = jax.Array

_UNROLL = 4


def check_regularisation(lmbda: float, n: Optional[int]) -> None:
    if lmbda != 0 and n is None:
        raise ValueError("Expected n, the size of the training set, with lmbda != 0 (L2 is ηλ/n)")


@functools.partial(jax.jit, static_argnames=("lmbda", "n") + STATIC)
def sgd_step(
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    lmbda: float = 0.0,
    n: Optional[int] = None,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """One step of mini-batch gradient descent with the hand-written `grad`.

    network.py's ``update_mini_batch``: w <- w - eta * mean(dC/dw), b likewise; with
    ``lmbda`` > 0, network2.py's L2 form w <- (1 - eta*lmbda/n) w - eta * mean(dC/dw)
    (biases are not decayed).

    Args:
      params: a list of `Layer`.
      xs: the mini-batch, shape (batch, n_in).
      ys: its targets, shape (batch, n_out).
      eta: the learning rate.
      lmbda: the L2 regularisation parameter lambda (static: a new value compiles anew).
      n: the size of the whole training set, needed when ``lmbda`` != 0 (static).
      activation, output_activation, cost: as for `grad`.

    Returns:
      New params; ``params`` is not changed.
    """
    check_regularisation(lmbda, n)
    grads = grad(
        params, xs, ys, activation=activation, output_activation=output_activation, cost=cost
    )
    return sgd_update(params, grads, eta, lmbda, n)


def sgd_update(params: Params, grads: Params, eta, lmbda: float, n: Optional[int]) -> list[Layer]:
    """w <- (1 - eta*lmbda/n) w - eta dC/dw, b <- b - eta dC/db (network2.py's rule)."""
    decay = 1.0 if n is None else 1.0 - eta * lmbda / n
    return [
        Layer(decay * layer.w - eta * g.w, layer.b - eta * g.b) for layer, g in zip(params, grads)
    ]


def _scan_epoch(
    key: Array,
    carry: Any,
    xs: Array,
    ys: Array,
    batch_size: int,
    step: Callable[[Any, Array, Array], Any],
) -> Any:
    """Shuffles, then applies ``step(carry, xs_batch, ys_batch)`` to every mini-batch.

    Full mini-batches run inside one `jax.lax.scan`. The shuffled mini-batches are
    gathered once per epoch, a copy of the data set: one large gather is faster than a
    small one per step (measured with scripts/bench.py's epoch case, about 20 % at
    batch 10), and the loop is unrolled 4 times to cut per-iteration overhead. A last,
    partial mini-batch (when ``batch_size`` does not divide the number of examples) is
    one more step of its smaller size, as in network.py, which keeps it.
    """
    num_examples = xs.shape[0]
    order = jax.random.permutation(key, num_examples)
    num_full = num_examples // batch_size
    full = order[: num_full * batch_size].reshape(num_full, batch_size)

    def body(carry, batch):
        return step(carry, *batch), None

    carry, _ = jax.lax.scan(body, carry, (xs[full], ys[full]), unroll=_UNROLL)
    if num_examples % batch_size:
        rest = order[num_full * batch_size :]
        carry = step(carry, xs[rest], ys[rest])
    return carry


def _check_epoch(params, xs, ys, batch_size, options) -> None:
    prepare(params, xs, ys, **options, batched=True)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive int, got {batch_size!r} instead")


@functools.partial(jax.jit, static_argnames=("batch_size", "lmbda", "n") + STATIC)
def train_epoch(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    batch_size: int,
    lmbda: float = 0.0,
    n: Optional[int] = None,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> list[Layer]:
    """One epoch of network.py's SGD: shuffle, cut mini-batches, `sgd_step` each.

    Args:
      key: a `jax.random` key for the shuffle.
      params: a list of `Layer`.
      xs, ys: the training set, shapes (num_examples, n_in) and (num_examples, n_out).
      eta, lmbda, n: as for `sgd_step`; ``n`` defaults to ``num_examples``.
      batch_size: examples per mini-batch. When it does not divide ``num_examples``,
        the last, smaller mini-batch is one more step, as in network.py.
      activation, output_activation, cost: as for `grad`.

    Returns:
      The params after the epoch.
    """
    options = dict(activation=activation, output_activation=output_activation, cost=cost)
    _check_epoch(params, xs, ys, batch_size, options)
    n = xs.shape[0] if n is None else n

    def step(params, xb, yb):
        return sgd_step(params, xb, yb, eta, lmbda=lmbda, n=n, **options)

    return _scan_epoch(key, params, xs, ys, batch_size, step)


@functools.partial(jax.jit, static_argnames=("optimizer",) + STATIC)
def optax_step(
    optimizer: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> tuple[list[Layer], optax.OptState]:
    """One step of any optax optimizer driven by the hand-written `grad`.

    Example::

        optimizer = optax.adam(1e-3)
        opt_state = optimizer.init(params)
        params, opt_state = optax_step(optimizer, params, opt_state, xs, ys)

    Returns:
      ``(params, opt_state)``, both new.
    """
    grads = grad(
        params, xs, ys, activation=activation, output_activation=output_activation, cost=cost
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size") + STATIC)
def optax_epoch(
    key: Array,
    optimizer: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    batch_size: int,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> tuple[list[Layer], optax.OptState]:
    """`train_epoch` with `optax_step` in place of `sgd_step`: any optax optimizer."""
    options = dict(activation=activation, output_activation=output_activation, cost=cost)
    _check_epoch(params, xs, ys, batch_size, options)

    def step(carry, xb, yb):
        return optax_step(optimizer, *carry, xb, yb, **options)

    return _scan_epoch(key, (params, opt_state), xs, ys, batch_size, step)


def _in_batches(fn: Callable[[Array, Array], Array], xs, ys, batch_size: int) -> Array:
    """Sum of ``fn`` over consecutive batches (each a jitted call of at most two shapes)."""
    total = 0.0
    for start in range(0, xs.shape[0], batch_size):
        total = total + fn(xs[start : start + batch_size], ys[start : start + batch_size])
    return total


def evaluate(
    params: Params,
    xs: Array,
    labels: Array,
    *,
    batch_size: int = 10_000,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
) -> int:
    """network.py's ``evaluate``: how many examples have argmax(a^L) == label.

    Args:
      labels: class indices, shape (num_examples,).
    """

    def correct(xb, lb):
        out = feedforward(params, xb, activation=activation, output_activation=output_activation)
        return jnp.sum(jnp.argmax(out, axis=-1) == lb)

    return int(_in_batches(correct, xs, labels, batch_size))


def accuracy(params: Params, xs: Array, labels: Array, **kwargs) -> float:
    """The fraction of examples classified correctly; keywords as for `evaluate`."""
    return evaluate(params, xs, labels, **kwargs) / xs.shape[0]


def total_cost(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    lmbda: float = 0.0,
    batch_size: int = 10_000,
    activation: str | Activation = "sigmoid",
    output_activation: Optional[str | Activation] = None,
    cost: str | Cost = "quadratic",
) -> float:
    """network2.py's ``total_cost``: the mean cost plus the L2 term lmbda/(2n) sum w^2."""
    options = dict(activation=activation, output_activation=output_activation, cost=cost)
    summed = _in_batches(
        lambda xb, yb: loss(params, xb, yb, **options) * xb.shape[0], xs, ys, batch_size
    )
    num_examples = xs.shape[0]
    l2 = 0.5 * lmbda / num_examples * sum(jnp.sum(layer.w**2) for layer in params)
    return float(summed / num_examples + l2)
