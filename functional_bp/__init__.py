"""functional_bp: backpropagation written by hand as pure JAX functions, equation by
equation, and proven against jax.grad."""

from functional_bp.activations import ACTIVATIONS, Activation
from functional_bp.backprop import (
    backprop,
    error_terms,
    grad,
    loss,
    per_example_grads,
    value_and_grad,
)
from functional_bp.costs import COSTS, Cost
from functional_bp.forward import Cache, feedforward, forward
from functional_bp.params import Layer, init_mlp, layer_sizes

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "Activation",
    "Cache",
    "Cost",
    "Layer",
    "backprop",
    "error_terms",
    "feedforward",
    "forward",
    "grad",
    "init_mlp",
    "layer_sizes",
    "loss",
    "per_example_grads",
    "value_and_grad",
]
