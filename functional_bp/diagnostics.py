"""How training is going: accuracy and cost (network.py's ``evaluate``, network2.py's
``total_cost``), divergence, and the per-layer gradient sizes that show vanishing
gradients.

Eq 85 multiplies one sigma'(h) per layer on the way back, and sigma'(z) <= 1/4 for the
sigmoid, so the early layers of a deep sigmoid network learn slowly: `layer_gradient_norms`
is the picture of the book's chapter 5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import (
    check_int,
    check_label_range,
    check_nonempty,
    check_number,
    check_params,
)
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Params

Array = jax.Array

__all__ = [
    "LayerNorms",
    "TrainingDiverged",
    "accuracy",
    "check_divergence",
    "correct",
    "evaluate",
    "l2_term",
    "layer_gradient_norms",
    "total_cost",
]


class LayerNorms(NamedTuple):
    """Per-layer gradient sizes, each of shape (L,), layer 1 first.

    Attributes:
      delta: ||delta^l|| of the mini-batch mean, i.e. ||dC/db^l|| (eq 7): the book's
        "speed of learning" of layer l.
      weight_grad: ||dC/dw^l||_F (eq 99).

    Examples:
      >>> norms = fbp.diagnostics.LayerNorms(jnp.ones(2), jnp.zeros(2))
      >>> norms.delta.shape, norms.weight_grad.shape
      ((2,), (2,))
    """

    delta: Array
    weight_grad: Array


@jit_with_net(half_in_float32=True)
def layer_gradient_norms(
    params: Params, xs: Array, ys: Array, *, net: Network = Network()
) -> LayerNorms:
    """||delta^l|| and ||dC/dw^l|| for every layer, from the hand-written mean gradient.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> norms = fbp.diagnostics.layer_gradient_norms(params, xs, ys)
      >>> norms.delta.shape, bool(jnp.all(norms.weight_grad > 0))
      ((2,), True)
    """
    core.check(net, params, xs, ys)
    grads = core.mean_value_and_grad(net, params, xs, ys)[1]
    return LayerNorms(
        jnp.stack([jnp.linalg.norm(g.b) for g in grads]),
        jnp.stack([jnp.linalg.norm(g.w) for g in grads]),
    )


def _check_labels(labels, xs, num_classes: int) -> None:
    """Labels are class indices, one per example, each in [0, num_classes)."""
    shape, dtype = np.shape(labels), jnp.result_type(labels)
    if len(shape) != 1 or shape[0] != np.shape(xs)[0] or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"Expected labels to be class indices, integers of shape ({np.shape(xs)[0]},) "
            f"for xs of shape {np.shape(xs)}, got {dtype} of shape {shape} instead "
            "(one-hot targets? pass their argmax)"
        )
    check_label_range(labels, num_classes, "labels")


@jit_with_net(half_in_float32=True)
def correct(params: Params, xs: Array, labels: Array, *, net: Network = Network()) -> Array:
    """How many examples have argmax(a^L) == label, as a jitted scalar (the metric
    `evaluate` sums over batches; vmap it over runs with `training.many`).

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      labels: class indices, integers of shape (batch,).
      net: the `Network` (its cost is not used).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs = jax.random.normal(jax.random.key(1), (4, 3))
      >>> labels = jnp.argmax(mlp(params, xs), axis=-1)  # the network's own guesses
      >>> int(fbp.diagnostics.correct(params, xs, labels))
      4
    """
    core.check(net, params, xs, batched=True, layered=True)
    _check_labels(labels, xs, np.shape(params[-1].w)[0])
    outputs = core.forward_pass(net, params, xs).activations[-1]
    return jnp.sum(jnp.argmax(outputs, axis=-1) == labels)


def _in_batches(fn: Callable[[Array, Array], Array], xs, ys, batch_size: int) -> Array:
    """Sum of ``fn`` over consecutive batches (each a jitted call of at most two shapes)."""
    batch_size = check_int(batch_size, "batch_size")
    total = 0
    for start in range(0, xs.shape[0], batch_size):
        total = total + fn(xs[start : start + batch_size], ys[start : start + batch_size])
    return total


def evaluate(
    params: Params,
    xs: Array,
    labels: Array,
    *,
    batch_size: int = 10_000,
    net: Network = Network(),
) -> int:
    """network.py's ``evaluate``: how many examples have argmax(a^L) == label.

    Args:
      params: a list of `Layer`.
      xs: shape (num_examples, n_in).
      labels: class indices, integers of shape (num_examples,).
      batch_size: examples per jitted call.
      net: the `Network` (its cost is not used).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs = jax.random.normal(jax.random.key(1), (5, 3))
      >>> labels = jnp.argmax(mlp(params, xs), axis=-1)
      >>> fbp.diagnostics.evaluate(params, xs, labels, batch_size=2)
      5
    """
    core.check(net, params, xs, batched=True, layered=True)
    _check_labels(labels, xs, np.shape(params[-1].w)[0])
    count = _in_batches(lambda xb, lb: correct(params, xb, lb, net=net), xs, labels, batch_size)
    return int(count)


def accuracy(
    params: Params, xs: Array, labels: Array, *, batch_size: int = 10_000, net: Network = Network()
) -> float:
    """The fraction of examples classified correctly (`evaluate` / number of examples).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs = jax.random.normal(jax.random.key(1), (4, 3))
      >>> fbp.diagnostics.accuracy(params, xs, jnp.argmax(mlp(params, xs), axis=-1))
      1.0
    """
    check_nonempty(xs)
    return evaluate(params, xs, labels, batch_size=batch_size, net=net) / xs.shape[0]


def l2_term(params: Params, weight_decay) -> Array:
    r"""network2.py's L2 term of the cost, lmbda/(2n) sum_l ||w^l||^2 = (wd/2) sum_l
    ||w^l||^2 with wd = lmbda / n (biases excluded):

    \[ \frac{\lambda}{2n} \sum_l \lVert w^l \rVert^2
        = \frac{\mathrm{wd}}{2} \sum_l \lVert w^l \rVert^2,
        \qquad \mathrm{wd} = \frac{\lambda}{n} \]

    Examples:
      >>> params = [Layer(jnp.ones((2, 3)), jnp.ones(2))]  # sum of w^2 = 6
      >>> float(fbp.diagnostics.l2_term(params, 0.5))
      1.5
    """
    return 0.5 * weight_decay * sum(jnp.sum(layer.w**2) for layer in params)


def total_cost(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    weight_decay: float = 0.0,
    batch_size: int = 10_000,
    net: Network = Network(),
) -> float:
    r"""network2.py's ``total_cost``: the mean cost plus the L2 term (wd/2) sum w^2
    (`l2_term`), \( \frac{1}{n} \sum_x C_x + \frac{\mathrm{wd}}{2} \sum_l \lVert w^l \rVert^2 \).

    Args:
      params: a list of `Layer`.
      xs: shape (num_examples, n_in).
      ys: shape (num_examples, n_out).
      weight_decay: wd = lmbda / n, as for `functional_bp.sgd_step`.
      batch_size: examples per jitted call.
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> cost = fbp.diagnostics.total_cost(params, xs, ys, weight_decay=0.1)
      >>> isinstance(cost, float), cost > fbp.diagnostics.total_cost(params, xs, ys)
      (True, True)
    """
    core.check(net, params, xs, ys, layered=True)
    check_number(weight_decay, "weight_decay", minimum=0)

    def summed(xb, yb):
        return _summed_cost(params, xb, yb, net=net)

    mean = _in_batches(summed, xs, ys, batch_size) / xs.shape[0]
    return float(mean + l2_term(params, weight_decay))


@jit_with_net(half_in_float32=True)
def _summed_cost(params, xs, ys, *, net):
    return core.mean_cost(net, params, xs, ys) * xs.shape[0]


class TrainingDiverged(FloatingPointError):
    """Training produced a NaN or infinite cost or params, or params beyond ``max_abs``.

    Examples:
      >>> issubclass(fbp.diagnostics.TrainingDiverged, FloatingPointError)
      True
    """


@jax.jit
def _health(params: Params) -> tuple[Array, Array]:
    leaves = jax.tree.leaves(params)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))
    return finite, largest


def check_divergence(
    params: Params, cost: Optional[float] = None, *, epoch: Optional[int] = None, max_abs=1e6
) -> None:
    """Raises `TrainingDiverged` unless ``cost`` and every param are finite and no
    |param| exceeds ``max_abs``; call it after each epoch (the CLI does).

    A too-large learning rate shows as NaN, or, in a sigmoid network, as params that
    grow to 1e28 while every neuron saturates and the cost stays finite: hence
    ``max_abs``.

    Example::

        params = train_epoch(key, params, xs, ys, 3.0, batch_size=10)
        check_divergence(params, total_cost(params, xs, ys), epoch=epoch)

    Args:
      params: a list of `Layer`.
      cost: the cost after the epoch, or None to check the params alone.
      epoch: named in the message.
      max_abs: the largest magnitude a param may reach; None for no limit.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> fbp.diagnostics.check_divergence(params, 0.5)  # healthy: returns None
      >>> fbp.diagnostics.check_divergence(params, float("nan"), epoch=3)
      Traceback (most recent call last):
        ...
      functional_bp.diagnostics.TrainingDiverged: training diverged at epoch 3 (cost nan)
    """
    # NaN would make every comparison false and switch the check off.
    check_number(max_abs, "max_abs", minimum=0, inclusive=False, optional=True)
    if all(np.ndim(layer[0]) == 2 for layer in params if isinstance(layer, tuple)):
        check_params(params)  # dense: the chain of shapes; a convolution's w has rank 4
    finite, largest = _health(params)
    finite, largest = bool(finite), float(largest)
    where = "" if epoch is None else f" at epoch {epoch}"
    cost_text = "" if cost is None else f"cost {float(cost):.6g}, "
    if cost is not None and not np.isfinite(cost):
        raise TrainingDiverged(f"training diverged{where} ({cost_text.rstrip(', ')})")
    if not finite:
        raise TrainingDiverged(f"training diverged{where} ({cost_text}params not finite)")
    if max_abs is not None and largest > max_abs:
        raise TrainingDiverged(
            f"training diverged{where} ({cost_text}largest |param| {largest:.3g} > {max_abs:g})"
        )
