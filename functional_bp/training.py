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
import numpy as np
import optax

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
    check_nonempty,
    check_number,
    check_params,
    check_values,
    optional_count,
    optional_non_negative,
    positive,
)
from functional_bp.backward import mean_cost, mean_value_and_grad
from functional_bp.curvature import CurvatureTransformation, mean_diag_ggn
from functional_bp.forward import forward_pass
from functional_bp.params import Layer, Params

Array = jax.Array

_UNROLL = 4


def check_l2(lmbda, n) -> None:
    """network2.py's decay is eta lmbda / n: with lmbda, n is needed."""
    if lmbda is not None and n is None:
        raise ValueError("Expected n, the size of the training set, with lmbda (L2 is ηλ/n)")


def sgd_update(params: Params, grads: Params, eta, lmbda=None, n=None) -> list[Layer]:
    """w <- (1 - eta lmbda / n) w - eta dC/dw, b <- b - eta dC/db (network2.py's rule;
    network.py's without lmbda)."""
    decay = 1 if lmbda is None else 1 - eta * lmbda / n
    return [
        Layer(decay * layer.w - eta * g.w, layer.b - eta * g.b) for layer, g in zip(params, grads)
    ]


def _sgd_step(params, xs, ys, eta, lmbda, n, opts: Options) -> list[Layer]:
    return sgd_update(params, mean_value_and_grad(params, xs, ys, opts)[1], eta, lmbda, n)


@check_values(eta=positive, lmbda=optional_non_negative, n=optional_count)
@functools.partial(jax.jit, static_argnames=STATIC)
@with_options_doc
def sgd_step(
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    lmbda: Optional[float] = None,
    n: Optional[int] = None,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """One step of mini-batch gradient descent with the hand-written `grad`.

    network.py's ``update_mini_batch``: w <- w - eta * mean(dC/dw), b likewise; with
    ``lmbda``, network2.py's L2 form w <- (1 - eta*lmbda/n) w - eta * mean(dC/dw)
    (biases are not decayed). ``eta``, ``lmbda`` and ``n`` are traced: new values do
    not compile again.

    Args:
      params: a list of `Layer`.
      xs: the mini-batch, shape (batch, n_in).
      ys: its targets, shape (batch, n_out).
      eta: the learning rate.
      lmbda: the L2 regularisation parameter lambda; None (the default) for none.
      n: the size of the whole training set, needed with ``lmbda``.
      {options}

    Returns:
      New params; ``params`` is not changed.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    check_l2(lmbda, n)
    return _sgd_step(params, xs, ys, eta, lmbda, n, opts)


def scan_epoch(
    key: Array,
    carry: Any,
    xs: Array,
    ys: Array,
    step: Callable[[Any, Array, Array], Any],
    *,
    batch_size: int,
) -> Any:
    """One epoch of any step: shuffle with ``key``, then ``carry = step(carry, xb, yb)``
    for every mini-batch, inside one `jax.lax.scan`.

    `train_epoch` and `optax_epoch` are this with their steps; pass your own step (a
    `jax.grad` step, another optimizer) to run it the same way. Each step gathers its
    mini-batch from ``xs`` and ``ys`` by index, so the data set is never copied: under
    `jax.vmap` over runs (`train_epoch_many`) every run reads the one shared data set.
    The loop is unrolled 4 times to cut per-iteration overhead. A last, partial
    mini-batch (when ``batch_size`` does not divide the number of examples) is one more
    step of its smaller size, as in network.py, which keeps it.

    Args:
      key: a `jax.random` key for the shuffle (``jax.random.permutation(key, n)``).
      carry: what ``step`` updates: params, or (params, opt_state), ...
      xs, ys: the training set, each with a leading axis of the examples.
      step: ``step(carry, xb, yb) -> carry``.
      batch_size: examples per mini-batch.
    """
    check_key(key)
    batch_size = check_int(batch_size, "batch_size")
    num_examples = xs.shape[0]
    order = jax.random.permutation(key, num_examples)
    num_full = num_examples // batch_size
    full = order[: num_full * batch_size].reshape(num_full, batch_size)

    def body(carry, batch):
        return step(carry, xs[batch], ys[batch]), None

    carry, _ = jax.lax.scan(body, carry, full, unroll=_UNROLL)
    if num_examples % batch_size:
        rest = order[num_full * batch_size :]
        carry = step(carry, xs[rest], ys[rest])
    return carry


@check_values(key=check_key, eta=positive, lmbda=optional_non_negative, n=optional_count)
@functools.partial(jax.jit, static_argnames=("batch_size",) + STATIC)
@with_options_doc
def train_epoch(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    eta: float,
    *,
    batch_size: int,
    lmbda: Optional[float] = None,
    n: Optional[int] = None,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """One epoch of network.py's SGD: shuffle, cut mini-batches, `sgd_step` each.

    Args:
      key: a `jax.random` key for the shuffle.
      params: a list of `Layer`.
      xs, ys: the training set, shapes (num_examples, n_in) and (num_examples, n_out).
      eta: the learning rate (traced).
      batch_size: examples per mini-batch. When it does not divide ``num_examples``,
        the last, smaller mini-batch is one more step, as in network.py.
      lmbda, n: as for `sgd_step` (traced); ``n`` defaults to ``num_examples``.
      {options}

    Returns:
      The params after the epoch.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    n = xs.shape[0] if n is None else n

    def step(params, xb, yb):
        return _sgd_step(params, xb, yb, eta, lmbda, n, opts)

    return scan_epoch(key, params, xs, ys, step, batch_size=batch_size)


def train_epoch_many(
    keys: Array,
    params: Params,
    xs: Array,
    ys: Array,
    etas,
    *,
    batch_size: int,
    lmbda=None,
    n=None,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """`train_epoch` for R runs in one program: ``jax.vmap`` over the runs' params (leaves
    with a leading run axis, as `init_mlp_many` makes them) and learning rates, with the
    data set shared by all runs. Run r equals ``train_epoch(keys[r], params[r], xs, ys,
    etas[r], ...)``.

    Args:
      keys: R keys (``jax.random.split(key, R)``): every run shuffles its own way, as
        separate runs would; or one key: one shuffle shared by all runs, which turns
        each run's small first-layer product into one large one (faster on a CPU).
      params: a list of `Layer` with a leading run axis.
      xs, ys: the training set, shared.
      etas: a learning rate per run, shape (R,), or one for all.
      batch_size, lmbda, n: as for `train_epoch` (``lmbda`` and ``n`` shared).
      activation, output_activation, cost: as for `train_epoch`.

    Returns:
      The params of every run after the epoch, leading run axis.
    """
    key_axis = None if np.shape(keys) == () else 0
    etas = jnp.asarray(etas)
    eta_axis = None if etas.ndim == 0 else 0
    epoch = functools.partial(
        train_epoch,
        batch_size=batch_size,
        lmbda=lmbda,
        n=n,
        activation=activation,
        output_activation=output_activation,
        cost=cost,
    )
    run = jax.vmap(epoch, in_axes=(key_axis, 0, None, None, eta_axis))
    return run(keys, params, xs, ys, etas)


class TrainingDiverged(FloatingPointError):
    """Training produced a NaN or infinite cost or params, or params beyond ``max_abs``."""


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
    |param| exceeds ``max_abs``; call it after each `train_epoch` (the CLI does).

    A too-large eta shows as NaN, or, in a sigmoid network, as params that grow to 1e28
    while every neuron saturates and the cost stays finite: hence ``max_abs``.

    Example::

        params = train_epoch(key, params, xs, ys, eta, batch_size=10)
        check_divergence(params, total_cost(params, xs, ys), epoch=epoch)

    Args:
      params: a list of `Layer`.
      cost: the cost after the epoch, or None to check the params alone.
      epoch: named in the message.
      max_abs: the largest magnitude a param may reach; None for no limit.
    """
    check_params(params)
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


def _optax_step(optimizer, params, opt_state, xs, ys, opts: Options):
    grads = mean_value_and_grad(params, xs, ys, opts)[1]
    extra = {}
    if isinstance(optimizer, CurvatureTransformation):  # it preconditions with the GGN
        extra["diag_ggn"] = mean_diag_ggn(params, xs, ys, opts)
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnames=("optimizer",) + STATIC)
@with_options_doc
def optax_step(
    optimizer: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> tuple[list[Layer], optax.OptState]:
    """One step of any optax optimizer driven by the hand-written `grad`.

    A `CurvatureTransformation` (`diag_ggn_descent`) also gets the mini-batch's
    `diag_ggn`, computed in the same step.

    Example::

        optimizer = optax.adam(1e-3)
        opt_state = optimizer.init(params)
        params, opt_state = optax_step(optimizer, params, opt_state, xs, ys)

    Args:
      optimizer: an `optax.GradientTransformation` (static: hashed by identity).
      params: a list of `Layer`.
      opt_state: ``optimizer.init(params)`` or the state a previous step returned.
      xs: the mini-batch, shape (batch, n_in).
      ys: its targets, shape (batch, n_out).
      {options}

    Returns:
      ``(params, opt_state)``, both new.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    return _optax_step(optimizer, params, opt_state, xs, ys, opts)


@check_values(key=check_key)
@functools.partial(jax.jit, static_argnames=("optimizer", "batch_size") + STATIC)
@with_options_doc
def optax_epoch(
    key: Array,
    optimizer: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    batch_size: int,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> tuple[list[Layer], optax.OptState]:
    """`train_epoch` with `optax_step` in place of `sgd_step`: any optax optimizer.

    Args:
      key: a `jax.random` key for the shuffle.
      optimizer: an `optax.GradientTransformation`.
      params: a list of `Layer`.
      opt_state: the optimizer's state.
      xs, ys: the training set, shapes (num_examples, n_in) and (num_examples, n_out).
      batch_size: examples per mini-batch, as for `train_epoch`.
      {options}

    Returns:
      ``(params, opt_state)`` after the epoch.
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)

    def step(carry, xb, yb):
        return _optax_step(optimizer, *carry, xb, yb, opts)

    return scan_epoch(key, (params, opt_state), xs, ys, step, batch_size=batch_size)


def _in_batches(fn: Callable[[Array, Array], Array], xs, ys, batch_size: int) -> Array:
    """Sum of ``fn`` over consecutive batches (each a jitted call of at most two shapes)."""
    batch_size = check_int(batch_size, "batch_size")
    total = 0
    for start in range(0, xs.shape[0], batch_size):
        total = total + fn(xs[start : start + batch_size], ys[start : start + batch_size])
    return total


@functools.partial(jax.jit, static_argnames="opts")
def _count_correct(params: Params, xs: Array, labels: Array, opts: Options) -> Array:
    outputs = forward_pass(params, xs, opts).activations[-1]
    return jnp.sum(jnp.argmax(outputs, axis=-1) == labels)


@functools.partial(jax.jit, static_argnames="opts")
def _summed_cost(params: Params, xs: Array, ys: Array, opts: Options) -> Array:
    return mean_cost(params, xs, ys, opts) * xs.shape[0]


def _check_labels(labels, xs, num_classes: int) -> None:
    """Labels are class indices, one per example, each in [0, num_classes)."""
    shape, dtype = np.shape(labels), jnp.result_type(labels)
    if len(shape) != 1 or shape[0] != np.shape(xs)[0] or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"Expected labels to be class indices, integers of shape ({np.shape(xs)[0]},) "
            f"for xs of shape {np.shape(xs)}, got {dtype} of shape {shape} instead "
            "(one-hot targets? pass their argmax)"
        )
    if isinstance(labels, jax.core.Tracer) or shape[0] == 0:
        return
    values = np.asarray(labels)
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"Expected labels in [0, {num_classes}) for an output layer of {num_classes} "
            f"neurons, got values from {low} to {high} instead"
        )


def evaluate(
    params: Params,
    xs: Array,
    labels: Array,
    *,
    batch_size: int = 10_000,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
) -> int:
    """network.py's ``evaluate``: how many examples have argmax(a^L) == label.

    Args:
      params: a list of `Layer`.
      xs: shape (num_examples, n_in).
      labels: class indices, integers of shape (num_examples,).
      batch_size: examples per jitted call.
      activation, output_activation: as for `feedforward`.
    """
    opts = prepare(params, xs, None, activation, output_activation, None, batched=True)
    _check_labels(labels, xs, np.shape(params[-1].w)[0])
    correct = _in_batches(
        lambda xb, lb: _count_correct(params, xb, lb, opts), xs, labels, batch_size
    )
    return int(correct)


def accuracy(params: Params, xs: Array, labels: Array, **kwargs) -> float:
    """The fraction of examples classified correctly; keywords as for `evaluate`."""
    check_nonempty(xs)
    return evaluate(params, xs, labels, **kwargs) / xs.shape[0]


def l2_term(params: Params, lmbda, num_examples: int) -> Array:
    """network2.py's L2 term of the cost, lmbda/(2n) sum_l ||w^l||^2 (biases excluded)."""
    return 0.5 * lmbda / num_examples * sum(jnp.sum(layer.w**2) for layer in params)


@with_options_doc
def total_cost(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    lmbda: float = 0.0,
    batch_size: int = 10_000,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> float:
    """network2.py's ``total_cost``: the mean cost plus the L2 term lmbda/(2n) sum w^2.

    Args:
      params: a list of `Layer`.
      xs, ys: shapes (num_examples, n_in) and (num_examples, n_out).
      lmbda: the L2 regularisation parameter lambda.
      batch_size: examples per jitted call.
      {options}
    """
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    check_number(lmbda, "lmbda", minimum=0)
    summed = _in_batches(lambda xb, yb: _summed_cost(params, xb, yb, opts), xs, ys, batch_size)
    num_examples = xs.shape[0]
    return float(summed / num_examples + l2_term(params, lmbda, num_examples))
