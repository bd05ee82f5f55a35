"""functional_bp: backpropagation written by hand as pure JAX functions, equation by
equation, and proven against jax.grad.

The top level holds the book's own vocabulary: the network (`Network`, `Layer`,
`Activation`, `Cost`, `init_mlp`), the forward pass and the cost, the gradient and the
equations it is built from, the gradient check, and network.py's `sgd_step` and
`train_epoch`. Everything else lives in family namespaces:

- `functional_bp.core`: the batched forward/backward record every family is built on;
  build your own quantities on it.
- `functional_bp.layers`: layer types beyond dense (convolution, pooling, flattening,
  dropout), each with its forward map, error transport and gradient.
- `functional_bp.per_example`: per-example gradients, norms, clipping, DP-SGD.
- `functional_bp.privacy`: privacy accounting (epsilon of a run), Poisson-sampled epochs.
- `functional_bp.statistics`: per-example gradient statistics (variance, noise scale).
- `functional_bp.curvature`: Gauss-Newton diagonal, Kronecker factors, a GGN optimizer.
- `functional_bp.laplace`: Laplace approximations of the posterior from that curvature.
- `functional_bp.feedback`: feedback alignment and other learning rules.
- `functional_bp.training`: training as gradient x update x loop; many runs at once.
- `functional_bp.parallel`: data parallelism on meshes and several processes.
- `functional_bp.diagnostics`: accuracy, cost, divergence, per-layer gradient sizes.
- `functional_bp.data`, `functional_bp.io`: data sets; saving and loading params.
- `functional_bp.activations`, `functional_bp.costs`: the built-in sigma and C.
"""

# First: the command line handles Ctrl-C and SIGTERM from here on, before JAX imports.
import functional_bp.cli.early as _early
from functional_bp import (
    activations,
    core,
    costs,
    curvature,
    data,
    diagnostics,
    feedback,
    io,
    laplace,
    layers,
    parallel,
    per_example,
    privacy,
    statistics,
    timing,
    training,
)
from functional_bp.activations import Activation
from functional_bp.chain_rule import chain_rule_gradients
from functional_bp.costs import ClosedForm, Cost
from functional_bp.equations import hidden_error, layer_gradient, output_error, weighted_error
from functional_bp.gradcheck import check_gradients
from functional_bp.gradients import backprop, error_terms, forward, grad, loss, mlp, value_and_grad
from functional_bp.network import Network
from functional_bp.params import Layer, init_mlp
from functional_bp.training import sgd_step, train_epoch

__all__ = [
    "Activation",
    "ClosedForm",
    "Cost",
    "Layer",
    "Network",
    "backprop",
    "chain_rule_gradients",
    "check_gradients",
    "error_terms",
    "forward",
    "grad",
    "hidden_error",
    "init_mlp",
    "layer_gradient",
    "loss",
    "mlp",
    "output_error",
    "sgd_step",
    "train_epoch",
    "value_and_grad",
    "weighted_error",
]
