"""The options every public function takes, resolved and checked once per trace.

``activation``, ``output_activation`` and ``cost`` arrive as keywords (names or user
objects) and become one `Options`, which every private core takes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._validation import check_data, check_nonempty, check_params
from functional_bp.activations import Activation, get_activation
from functional_bp.costs import Cost, check_compatible, get_cost

ActivationArg = str | Activation
CostArg = str | Cost


class Options(NamedTuple):
    """Hashable, so jitted functions take it as a static argument."""

    activation: Activation  # sigma of the hidden layers 1..L-1
    output_activation: Activation  # sigma of the output layer L
    cost: Optional[Cost]  # None where no cost is involved (the forward pass)


STATIC = ("activation", "output_activation", "cost")

OPTIONS_DOC = """activation: sigma of the hidden layers: "sigmoid", "tanh", "relu", "identity",
        "softmax" or an `Activation`.
      output_activation: sigma of the output layer; defaults to ``activation``.
      cost: "quadratic" (1/2 ||a - y||^2, network.py), "squared_error"
        (sum_j (a_j - y_j)^2, the 001 notes), "cross_entropy" (network2.py),
        "log_likelihood" (-sum_j y_j ln a_j, network3.py) or a `Cost`."""


def with_options_doc(fn):
    """Writes the shared description of the options where a docstring says {options}."""
    fn.__doc__ = fn.__doc__.replace("{options}", OPTIONS_DOC)
    return fn


def resolve(
    activation: ActivationArg, output_activation: Optional[ActivationArg], cost: Optional[CostArg]
) -> Options:
    """Names to objects; refuses a cost whose domain the output activation leaves."""
    hidden = get_activation(activation)
    output = hidden if output_activation is None else get_activation(output_activation)
    if cost is None:
        return Options(hidden, output, None)
    cost_ = get_cost(cost)
    check_compatible(cost_, output.name)
    return Options(hidden, output, cost_)


def _check_returns(what: str, fn, args: tuple, expected: tuple) -> None:
    """Traces ``fn(*args)`` abstractly; raises ValueError unless it returns ``expected``."""
    shapes = ", ".join(str(tuple(arg.shape)) for arg in args)
    try:
        got = tuple(jax.eval_shape(fn, *args).shape)
    except Exception as error:  # the user's function, traced on one example
        raise ValueError(f"{what} failed on one example (shapes {shapes}): {error}") from error
    if got != expected:
        raise ValueError(
            f"{what} returned shape {got} for one example (shapes {shapes}); expected {expected}"
        )


@functools.lru_cache(maxsize=1024)  # the same options and shapes are checked once
def check_contracts(opts: Options, sizes: tuple[int, ...], dtype: np.dtype) -> None:
    """Checks with `jax.eval_shape` that every `Activation` and `Cost` keeps its contract
    on one example: sigma, sigma' and the VJP return z's shape (n,); C returns a scalar
    and dC/da (or a closed-form delta^L) a's shape (n_out,)."""
    num_layers = len(sizes) - 1
    seen = set()
    for l, n in enumerate(sizes[1:], start=1):
        act = opts.output_activation if l == num_layers else opts.activation
        if (act, n) in seen:  # one check per activation and width
            continue
        seen.add((act, n))
        where = f"Activation {act.name!r} of layer {l}"
        z = jax.ShapeDtypeStruct((n,), dtype)
        _check_returns(f"{where}: fn", act.fn, (z,), (n,))
        if act.vjp is not None:
            _check_returns(f"{where}: vjp(z, a, g)", act.vjp, (z, z, z), (n,))
        else:
            _check_returns(f"{where}: derivative", act.derivative, (z,), (n,))
    if opts.cost is None:
        return
    n_out = sizes[-1]
    a = jax.ShapeDtypeStruct((n_out,), dtype)
    form = opts.cost.closed_form(opts.output_activation)
    where = f"Cost {opts.cost.name!r}" + (" (closed form in z)" if form else "")
    fn, delta, delta_args = (
        (opts.cost.fn, opts.cost.derivative, (a, a))
        if form is None
        else (form.fn, form.delta, (a, a, a))
    )
    _check_returns(f"{where}: fn", fn, (a, a), ())
    _check_returns(
        f"{where}: " + ("derivative" if form is None else "delta"), delta, delta_args, (n_out,)
    )


def prepare(
    params: Any,
    x: Any,
    y: Any,
    activation: ActivationArg,
    output_activation: Optional[ActivationArg],
    cost: Optional[CostArg],
    *,
    batched: Optional[bool],
) -> Options:
    """Checks everything a public function was given and resolves its options.

    Called once at trace time inside each jitted public function, before any maths; it
    costs nothing on later calls with the same shapes and options.
    """
    opts = resolve(activation, output_activation, cost)
    sizes = check_params(params)
    check_data(sizes, x, y, batched=batched)
    if batched and cost is not None:  # costs and gradients are means over the batch
        check_nonempty(x)
    check_contracts(opts, tuple(sizes), np.dtype(jnp.result_type(params[0][0])))
    return opts
