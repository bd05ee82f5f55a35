"""functional_bp: backpropagation written by hand as pure JAX functions, equation by
equation, and proven against jax.grad.

Everything a user calls is importable from here; the submodules hold it by topic:
`activations`, `costs`, `params`, `forward`, `backward` (the equations and the core),
`gradients`, `per_example`, `differentiable`, `training`, `parallel`, `diagnostics`,
`gradcheck`, `chain_rule`, `checkpoint`, `data`, `timing`, `statistics` (per-example
gradient statistics), `curvature` (Gauss-Newton diagonal, Kronecker factors),
`feedback` (feedback alignment and its relatives).
"""

from functional_bp.activations import ACTIVATIONS, Activation
from functional_bp.backward import hidden_error, layer_gradient, output_error, weighted_error
from functional_bp.chain_rule import chain_rule_gradients
from functional_bp.checkpoint import load_feedback, load_params, save_params
from functional_bp.costs import COSTS, ClosedForm, Cost
from functional_bp.curvature import (
    CurvatureTransformation,
    DiagGGNState,
    KFACFactors,
    diag_ggn,
    diag_ggn_descent,
    diag_ggn_mc,
    kfac_factors,
    scale_by_diag_ggn,
)
from functional_bp.data import Dataset, download_mnist, load_digits, load_mnist, one_hot
from functional_bp.diagnostics import LayerNorms, layer_gradient_norms
from functional_bp.differentiable import mlp
from functional_bp.feedback import (
    Alignment,
    alignment_angles,
    feedback_epoch,
    feedback_grad,
    feedback_step,
    init_feedback,
)
from functional_bp.forward import Cache, feedforward, forward
from functional_bp.gradcheck import GradCheck, LeafCheck, check_gradients
from functional_bp.gradients import backprop, error_terms, grad, loss, value_and_grad
from functional_bp.parallel import (
    data_mesh,
    data_parallel_epoch,
    data_parallel_grad,
    data_parallel_sgd_step,
)
from functional_bp.params import Layer, init_mlp, init_mlp_many, layer_sizes
from functional_bp.per_example import (
    PerExampleNorms,
    clipped_grad,
    dp_sgd_step,
    per_example_grad_norms,
    per_example_grads,
    private_grad,
)
from functional_bp.statistics import (
    NoiseScale,
    batch_dot,
    grad_variance,
    gradient_noise_scale,
    sum_grad_squared,
)
from functional_bp.timing import interleaved_medians
from functional_bp.training import (
    TrainingDiverged,
    accuracy,
    check_divergence,
    evaluate,
    optax_epoch,
    optax_step,
    scan_epoch,
    sgd_step,
    total_cost,
    train_epoch,
    train_epoch_many,
)

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "Activation",
    "Alignment",
    "Cache",
    "ClosedForm",
    "Cost",
    "CurvatureTransformation",
    "Dataset",
    "DiagGGNState",
    "GradCheck",
    "KFACFactors",
    "Layer",
    "LayerNorms",
    "LeafCheck",
    "NoiseScale",
    "PerExampleNorms",
    "TrainingDiverged",
    "accuracy",
    "alignment_angles",
    "backprop",
    "batch_dot",
    "chain_rule_gradients",
    "check_divergence",
    "check_gradients",
    "clipped_grad",
    "data_mesh",
    "data_parallel_epoch",
    "data_parallel_grad",
    "data_parallel_sgd_step",
    "diag_ggn",
    "diag_ggn_descent",
    "diag_ggn_mc",
    "download_mnist",
    "dp_sgd_step",
    "error_terms",
    "evaluate",
    "feedback_epoch",
    "feedback_grad",
    "feedback_step",
    "feedforward",
    "forward",
    "grad",
    "grad_variance",
    "gradient_noise_scale",
    "hidden_error",
    "init_feedback",
    "init_mlp",
    "init_mlp_many",
    "interleaved_medians",
    "kfac_factors",
    "layer_gradient",
    "layer_gradient_norms",
    "layer_sizes",
    "load_digits",
    "load_feedback",
    "load_mnist",
    "load_params",
    "loss",
    "mlp",
    "one_hot",
    "optax_epoch",
    "optax_step",
    "output_error",
    "per_example_grad_norms",
    "per_example_grads",
    "private_grad",
    "save_params",
    "scale_by_diag_ggn",
    "scan_epoch",
    "sgd_step",
    "sum_grad_squared",
    "total_cost",
    "train_epoch",
    "train_epoch_many",
    "value_and_grad",
    "weighted_error",
]
