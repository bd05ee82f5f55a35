"""Training as gradient x update x loop, and many runs at once.

- **Gradient**: a `functional_bp.core.Gradient`, ``gradient(key, net, params, xs, ys)``:
  `MeanGradient` (backprop), `per_example.ClippedGradient` and `PrivateGradient`,
  `feedback.RuleGradient`, `parallel.ShardedGradient`, or your own.
- **Update**: any optax ``GradientTransformation``. network.py's SGD is `optax.sgd`;
  network2.py's L2 is `optax.add_decayed_weights` on the weights chained before it
  (`sgd`). A transformation that needs more than the gradient declares it with an
  ``extra_inputs`` attribute, ``((name, fn(net, params, xs, ys)), ...)``, and the step
  passes each as ``update(..., name=value)`` (`curvature.diag_ggn_descent` does).
- **Loop**: `scan_epoch` runs any step over shuffled mini-batches in one `jax.lax.scan`.

`train_step` and `epoch` are the composition; the book's pair `sgd_step` and
`train_epoch` are thin wrappers of it, and `many` runs any of them (or any metric) for R
runs in one program.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from functional_bp import core
from functional_bp._validation import (
    check_int,
    check_key,
    check_values,
    is_traced,
    optional_key,
    optional_non_negative,
    positive,
)
from functional_bp.core import MeanGradient
from functional_bp.network import Network, jit_with_net, upcast_half
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "MeanGradient",
    "epoch",
    "many",
    "scan_epoch",
    "sgd",
    "sgd_step",
    "train_epoch",
    "train_step",
    "weights_only",
]


_UNROLL = 4


def weights_only(params: Any) -> Any:
    """The mask of the weights: True for the ``w`` of every `Layer` in ``params`` (any
    pytree that holds them), False for biases and everything else.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> fbp.training.weights_only(params)
      [Layer(w=True, b=False), Layer(w=True, b=False)]
    """

    def mark(node):
        if isinstance(node, Layer):
            return Layer(True, False)
        return False

    return jax.tree.map(mark, params, is_leaf=lambda node: isinstance(node, Layer))


def sgd(learning_rate, weight_decay: Optional[float] = None) -> optax.GradientTransformation:
    r"""network.py's update, w <- w - eta g (`optax.sgd`); with ``weight_decay``,
    network2.py's L2 form w <- (1 - eta wd) w - eta g with wd = lmbda / n, biases not
    decayed (`optax.add_decayed_weights` on `weights_only`, then `optax.sgd`):

    \[ w \leftarrow w - \eta\, g, \qquad
        w \leftarrow (1 - \eta\, \mathrm{wd})\, w - \eta\, g, \quad \mathrm{wd} = \lambda / n \]

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> optimizer = fbp.training.sgd(0.1, weight_decay=1e-3)
      >>> updates, _ = optimizer.update(params, optimizer.init(params), params)
      >>> [u.w.shape for u in updates]
      [(2, 3)]
    """
    if not callable(learning_rate):  # an optax schedule is the caller's to check
        positive(learning_rate, "learning_rate")
    optional_non_negative(weight_decay, "weight_decay")
    if weight_decay is None:
        return optax.sgd(learning_rate)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weights_only), optax.sgd(learning_rate)
    )


def _check_gradient(gradient, name: str) -> None:
    if not isinstance(gradient, core.Gradient):
        raise TypeError(
            f"Expected {name} to be a functional_bp.core.Gradient (MeanGradient(), "
            f"per_example.PrivateGradient(...), ...), got {type(gradient).__name__} instead"
        )
    gradient.check_values()


def _step(key, optimizer, params, opt_state, xs, ys, gradient, net):
    """gradient, then the optimizer's update with the extra inputs it declares. Half-
    precision params take their direction computed in float32 (`jit_with_net`'s
    ``half_in_float32``); the update keeps their dtype."""
    grads = upcast_half(gradient)(key, net, params, xs, ys)
    # A curvature the optimizer takes is that of the network without dropout, on purpose.
    inputs = _extra_inputs(optimizer, params)
    extra = {name: fn(net.deterministic(), params, xs, ys) for name, fn in inputs}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state


def _epoch(key, optimizer, params, opt_state, xs, ys, batch_size, gradient, net):
    """`_step` over every mini-batch of a shuffled epoch (`scan_epoch`)."""

    def step(step_key, carry, xb, yb):
        return _step(step_key, optimizer, *carry, xb, yb, gradient, net)

    return scan_epoch(key, (params, opt_state), xs, ys, step, batch_size=batch_size)


def _extra_inputs(optimizer, params) -> tuple:
    inputs = tuple(getattr(optimizer, "extra_inputs", ()))
    if inputs and not (isinstance(params, list) and all(isinstance(p, Layer) for p in params)):
        names = [name for name, _ in inputs]
        raise ValueError(
            f"The optimizer needs {names} of the network's own params (a list of Layer), "
            f"got {type(params).__name__}: it cannot train a learning rule's state"
        )
    return inputs


@check_values(key=optional_key, gradient=_check_gradient)
@jit_with_net(static=("optimizer",))
def train_step(
    key: Optional[Array],
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    gradient: core.Gradient = core.MeanGradient(),
    net: Network = Network(),
) -> tuple[Any, optax.OptState]:
    """One step: ``gradient``'s direction, then ``optimizer``'s update.

    Example::

        optimizer = optax.adam(1e-3)
        opt_state = optimizer.init(params)
        params, opt_state = train_step(None, optimizer, params, opt_state, xs, ys)

    Examples:
      >>> optimizer = fbp.training.sgd(0.1)
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> new, _ = fbp.training.train_step(None, optimizer, params, optimizer.init(params), xs, ys)
      >>> new[0].w.shape
      (2, 3)

    Args:
      key: a `jax.random` key for a gradient that draws (`per_example.PrivateGradient`);
        None for the others.
      optimizer: an optax ``GradientTransformation`` (static: hashed by identity, so make
        it once). Learning rates that vary per run go in its state
        (`optax.inject_hyperparams`).
      params: what the gradient differentiates: a list of `Layer`, or a rule's
        `feedback.FeedbackParams`.
      opt_state: ``optimizer.init(params)`` or the state the previous step returned.
      xs: the mini-batch, shape (batch, n_in).
      ys: its targets, shape (batch, n_out).
      gradient: a `core.Gradient`; `MeanGradient()` by default.
      net: the `Network`.

    Returns:
      ``(params, opt_state)``, both new.
    """
    gradient.check(net, params, xs, ys)
    return _step(key, optimizer, params, opt_state, xs, ys, gradient, net)


def scan_epoch(
    key: Array,
    carry: Any,
    xs: Array,
    ys: Array,
    step: Callable[[Array, Any, Array, Array], Any],
    *,
    batch_size: int,
) -> Any:
    """One epoch of any step: shuffle with ``key``, then ``carry = step(step_key, carry,
    xb, yb)`` for every mini-batch, inside one `jax.lax.scan`.

    The shuffle is ``jax.random.permutation(key, num_examples)``; step i gets
    ``jax.random.fold_in(key, i + 1)`` (unused keys cost nothing: XLA drops them). Each
    step gathers its mini-batch from ``xs`` and ``ys`` by index, so the data set is never
    copied: under `many` every run reads the one shared data set. The loop is unrolled 4
    times to cut per-iteration overhead. A last, partial mini-batch (when ``batch_size``
    does not divide the number of examples) is one more step of its smaller size, as in
    network.py, which keeps it.

    Args:
      key: a `jax.random` key.
      carry: what ``step`` updates: params, (params, opt_state), ...
      xs: the training set's inputs, with a leading axis of the examples.
      ys: its targets, likewise.
      step: ``step(key, carry, xb, yb) -> carry``.
      batch_size: examples per mini-batch.

    Examples:
      >>> step = lambda key, seen, xb, yb: seen + xb.shape[0]  # counts the examples
      >>> xs, ys = jnp.ones((10, 3)), jnp.zeros((10, 2))
      >>> int(fbp.training.scan_epoch(jax.random.key(0), 0, xs, ys, step, batch_size=4))
      10
    """
    check_key(key)
    batch_size = check_int(batch_size, "batch_size")
    num_examples = xs.shape[0]
    order = jax.random.permutation(key, num_examples)
    num_full = num_examples // batch_size
    full = order[: num_full * batch_size].reshape(num_full, batch_size)

    def body(carry, scanned):
        i, batch = scanned
        return step(jax.random.fold_in(key, i + 1), carry, xs[batch], ys[batch]), None

    carry, _ = jax.lax.scan(body, carry, (jnp.arange(num_full), full), unroll=_UNROLL)
    if num_examples % batch_size:
        rest = order[num_full * batch_size :]
        carry = step(jax.random.fold_in(key, num_full + 1), carry, xs[rest], ys[rest])
    return carry


@check_values(key=check_key, gradient=_check_gradient)
@jit_with_net(static=("optimizer", "batch_size"))
def epoch(
    key: Array,
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    batch_size: int,
    gradient: core.Gradient = core.MeanGradient(),
    net: Network = Network(),
) -> tuple[Any, optax.OptState]:
    """One epoch of `train_step` over shuffled mini-batches (`scan_epoch`).

    Args:
      key: a `jax.random` key: the shuffle, and each step's key.
      optimizer: as for `train_step`.
      params: as for `train_step`.
      opt_state: as for `train_step`.
      xs: the training set, shape (num_examples, n_in).
      ys: its targets, shape (num_examples, n_out).
      batch_size: examples per mini-batch; a last, smaller one is one more step.
      gradient: as for `train_step`.
      net: the `Network`.

    Returns:
      ``(params, opt_state)`` after the epoch.

    Examples:
      >>> optimizer = fbp.training.sgd(0.1)
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((10, 3)), jnp.zeros((10, 2))
      >>> new, _ = fbp.training.epoch(
      ...     jax.random.key(1), optimizer, params, optimizer.init(params), xs, ys, batch_size=4)
      >>> new[0].w.shape
      (2, 3)
    """
    gradient.check(net, params, xs, ys)
    return _epoch(key, optimizer, params, opt_state, xs, ys, batch_size, gradient, net)


@check_values(learning_rate=positive, weight_decay=optional_non_negative)
@jit_with_net
def sgd_step(
    params: Params,
    xs: Array,
    ys: Array,
    learning_rate: float,
    *,
    weight_decay: Optional[float] = None,
    net: Network = Network(),
) -> list[Layer]:
    r"""One step of mini-batch gradient descent with the hand-written `grad`:
    network.py's ``update_mini_batch``.

    w <- w - eta mean(dC/dw), b likewise; with ``weight_decay``, network2.py's L2 form
    w <- (1 - eta wd) w - eta mean(dC/dw), biases not decayed (wd = lmbda / n for
    network2.py's lmbda and training-set size n). ``learning_rate`` (eta) and
    ``weight_decay`` are traced: new values do not compile again.

    \[ w \leftarrow w - \eta\, \overline{\frac{\partial C}{\partial w}}, \qquad
        w \leftarrow (1 - \eta\, \mathrm{wd})\, w - \eta\, \overline{\frac{\partial C}{\partial w}},
        \quad \mathrm{wd} = \frac{\lambda}{n} \]

    Args:
      params: a list of `Layer`.
      xs: the mini-batch, shape (batch, n_in).
      ys: its targets, shape (batch, n_out).
      learning_rate: eta.
      weight_decay: wd; None (the default) for none.
      net: the `Network`.

    Returns:
      New params; ``params`` is not changed.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> new = sgd_step(params, jnp.ones((4, 3)), jnp.zeros((4, 2)), 0.5)
      >>> new[0].w.shape, bool(jnp.any(new[0].w != params[0].w))
      ((2, 3), True)
    """
    core.check(net, params, xs, ys, layered=True)
    if net.has_dropout:
        raise ValueError(
            "sgd_step takes no key, so a Dropout layer would be the identity: train a network "
            "with dropout with train_epoch or training.train_step(key, ...)"
        )
    optimizer = sgd(learning_rate, weight_decay)
    return _step(None, optimizer, params, optimizer.init(params), xs, ys, MeanGradient(), net)[0]


@check_values(key=check_key, learning_rate=positive, weight_decay=optional_non_negative)
@jit_with_net(static=("batch_size",))
def train_epoch(
    key: Array,
    params: Params,
    xs: Array,
    ys: Array,
    learning_rate: float,
    *,
    batch_size: int,
    weight_decay: Optional[float] = None,
    net: Network = Network(),
) -> list[Layer]:
    """One epoch of network.py's SGD: shuffle, cut mini-batches, `sgd_step` each.

    Args:
      key: a `jax.random` key for the shuffle.
      params: a list of `Layer`.
      xs: the training set, shape (num_examples, n_in).
      ys: its targets, shape (num_examples, n_out).
      learning_rate: eta (traced).
      batch_size: examples per mini-batch. When it does not divide ``num_examples``,
        the last, smaller mini-batch is one more step, as in network.py.
      weight_decay: as for `sgd_step` (traced).
      net: the `Network`.

    Returns:
      The params after the epoch.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((10, 3)), jnp.zeros((10, 2))
      >>> new = train_epoch(jax.random.key(1), params, xs, ys, 0.5, batch_size=4)
      >>> [layer.w.shape for layer in new]
      [(2, 3)]
    """
    core.check(net, params, xs, ys, layered=True)
    optimizer = sgd(learning_rate, weight_decay)
    opt_state = optimizer.init(params)
    return _epoch(key, optimizer, params, opt_state, xs, ys, batch_size, MeanGradient(), net)[0]


def many(fn: Callable, per_run: Sequence[str]) -> Callable:
    """``fn`` for R runs in one program: `jax.vmap` over the arguments named in
    ``per_run``, each with a leading run axis of the same length R; every other
    argument (the data set, static options) is shared by all runs.

    Run r's result equals ``fn`` called with run r's slice of each per-run argument.
    Works for any function of the library or your own: epochs (learning rules and DP
    included), steps, initialisers and metrics.

    Example::

        keys = jax.random.split(jax.random.key(0), 8)
        params = many(init_mlp, per_run=["key"])(keys, [784, 30, 10])
        epochs = many(train_epoch, per_run=["key", "params", "learning_rate"])
        params = epochs(keys, params, xs, ys, jnp.linspace(0.5, 4, 8), batch_size=10)
        costs = many(loss, per_run=["params"])(params, xs, ys)          # shape (8,)

    One key for all runs instead (``per_run=["params", "learning_rate"]``) shares one
    shuffle: each run's small first-layer product then becomes one large one.

    Raises (before any work):
      ValueError: a name in ``per_run`` is not a parameter of ``fn`` or was not given;
        the per-run arguments disagree on R (each is named with its R).

    Examples:
      >>> keys = jax.random.split(jax.random.key(0), 3)
      >>> params = fbp.training.many(init_mlp, per_run=["key"])(keys, [3, 2])
      >>> params[0].w.shape
      (3, 2, 3)
    """
    signature = inspect.signature(fn)
    per_run = list(per_run)
    unknown = [name for name in per_run if name not in signature.parameters]
    if unknown or not per_run:
        raise ValueError(
            f"Expected per_run to name parameters of {getattr(fn, '__name__', fn)}, got "
            f"{unknown or per_run}; it takes {list(signature.parameters)}"
        )

    @functools.wraps(fn)
    def run_all(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        missing = [name for name in per_run if name not in bound.arguments]
        if missing:
            raise ValueError(f"Expected per-run arguments {missing} to be given")
        runs = {name: _run_count(bound.arguments[name], name) for name in per_run}
        # A leafless argument (optax.sgd's EmptyState) has nothing to map: any R fits.
        runs = {name: count for name, count in runs.items() if count is not None}
        if not runs:
            raise ValueError(f"Expected a per-run argument with array leaves, got {per_run}")
        if len(set(runs.values())) > 1:
            raise ValueError(f"Expected every per-run argument to have one length R, got {runs}")
        _check_each_run(fn, {name: bound.arguments[name] for name in per_run})

        def one(*values):
            call = signature.bind(**dict(bound.arguments, **dict(zip(per_run, values))))
            return fn(*call.args, **call.kwargs)

        return jax.vmap(one)(*(bound.arguments[name] for name in per_run))

    return run_all


def _check_each_run(fn: Callable, values: dict[str, Any]) -> None:
    """Runs ``fn``'s value checks (`check_values`) on every run's slice of its per-run
    arguments, named ``name[r]``: inside the vmap they would only see tracers."""
    checks = getattr(fn, "value_checks", {})
    for name, value in values.items():
        rule = checks.get(name)
        leaves = jax.tree.leaves(value)
        if rule is None or any(is_traced(leaf) for leaf in leaves):
            continue
        # Numbers to the host once; keys stay keys (their checks look at the dtype).
        value = jax.tree.map(
            lambda leaf: (
                leaf if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else np.asarray(leaf)
            ),
            value,
        )
        for r in range(np.shape(leaves[0])[0]):
            where = f"{name}[{r}]"
            try:
                rule(jax.tree.map(lambda leaf, r=r: leaf[r], value), where)
            except (TypeError, ValueError) as error:
                if where in str(error):
                    raise
                raise type(error)(f"{where}: {error}") from None


def _run_count(value, name: str) -> Optional[int]:
    leaves = jax.tree.leaves(value)
    if not leaves:
        return None
    shapes = {np.shape(leaf)[:1] for leaf in leaves}
    if () in shapes or len(shapes) > 1:
        raise ValueError(
            f"Expected per-run argument {name} to have a leading run axis on every leaf, got "
            f"leaf shapes {sorted({np.shape(leaf) for leaf in leaves})[:4]}"
        )
    return shapes.pop()[0]
