"""functional_bp: backpropagation written by hand as pure JAX functions, equation by
equation, and proven against jax.grad."""

from functional_bp.activations import ACTIVATIONS, Activation
from functional_bp.backward import (
    backprop,
    error_terms,
    grad,
    loss,
    per_example_grads,
    value_and_grad,
)
from functional_bp.chain_rule import chain_rule_gradients
from functional_bp.costs import COSTS, Cost
from functional_bp.forward import Cache, feedforward, forward
from functional_bp.gradcheck import GradCheck, LeafCheck, check_gradients
from functional_bp.params import Layer, init_mlp, layer_sizes

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "Activation",
    "Cache",
    "Cost",
    "GradCheck",
    "LeafCheck",
    "Layer",
    "backprop",
    "chain_rule_gradients",
    "check_gradients",
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
