"""Resolving and checking the options every public function takes."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from functional_bp._validation import check_data, check_params
from functional_bp.activations import Activation, get_activation
from functional_bp.costs import Cost, check_compatible, get_cost


class Options(NamedTuple):
    """Hashable, so jitted functions take it as a static argument."""

    activation: Activation  # sigma of the hidden layers 1..L-1
    output_activation: Activation  # sigma of the output layer L
    cost: Cost


def resolve(
    activation: str | Activation,
    output_activation: Optional[str | Activation],
    cost: str | Cost,
) -> Options:
    hidden = get_activation(activation)
    output = hidden if output_activation is None else get_activation(output_activation)
    cost_ = get_cost(cost)
    check_compatible(cost_, output.name)
    return Options(hidden, output, cost_)


STATIC = ("activation", "output_activation", "cost")


def prepare(
    params: Any,
    x: Any,
    y: Any,
    activation: str | Activation,
    output_activation: Optional[str | Activation],
    cost: str | Cost,
    *,
    batched: Optional[bool],
) -> Options:
    """Checks everything a public function was given and resolves its options.

    Called at trace time inside the jitted public functions: it runs once per new
    combination of shapes, dtypes and options, before any maths, and costs nothing on
    later calls.
    """
    opts = resolve(activation, output_activation, cost)
    sizes = check_params(params)
    check_data(sizes, x, y, batched=batched)
    return opts
