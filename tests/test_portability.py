"""Every jitted public function lowers for GPUs and TPUs without the hardware: `jax.export`
produces the StableHLO that a CUDA, ROCm or TPU machine would compile. A CPU-only custom
call or a host callback added later fails here, with the function's name."""

import importlib

import jax
import jax.numpy as jnp
import optax
import pytest

import functional_bp as fbp
from functional_bp import curvature, feedback, parallel, per_example, privacy, training

PLATFORMS = ("cuda", "rocm", "tpu")
NAMESPACES = [
    "functional_bp",
    "functional_bp.chain_rule",
    "functional_bp.core",
    "functional_bp.curvature",
    "functional_bp.diagnostics",
    "functional_bp.feedback",
    "functional_bp.gradcheck",
    "functional_bp.parallel",
    "functional_bp.laplace",
    "functional_bp.per_example",
    "functional_bp.privacy",
    "functional_bp.statistics",
    "functional_bp.training",
]

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [3, 4, 2], dtype=jnp.float32)
XS = jax.random.normal(jax.random.key(1), (4, 3), jnp.float32)
YS = jax.nn.one_hot(jnp.array([0, 1, 1, 0]), 2, dtype=jnp.float32)
LABELS = jnp.array([0, 1, 1, 0])
SOFTMAX = fbp.Network(activation="relu", output_activation="softmax", cost="log_likelihood")
FA = feedback.init_feedback(KEY, PARAMS, "fa")
SGD = training.sgd(0.1)
MESH = parallel.data_mesh(1)

# name -> (function of the arrays, the arrays): everything else is closed over, as a
# user's jitted training step would.
CASES = {
    "forward": (lambda p, x: fbp.forward(p, x)[0], (PARAMS, XS)),
    "mlp": (lambda p, x: fbp.mlp(p, x, net=SOFTMAX), (PARAMS, XS)),
    "loss": (lambda p, x, y: fbp.loss(p, x, y), (PARAMS, XS, YS)),
    "grad": (lambda p, x, y: fbp.grad(p, x, y, net=SOFTMAX), (PARAMS, XS, LABELS)),
    "value_and_grad": (lambda p, x, y: fbp.value_and_grad(p, x, y), (PARAMS, XS, YS)),
    "backprop": (lambda p, x, y: fbp.backprop(p, x, y), (PARAMS, XS[0], YS[0])),
    "error_terms": (lambda p, x, y: fbp.error_terms(p, x, y), (PARAMS, XS[0], YS[0])),
    "sgd_step": (lambda p, x, y, lr: fbp.sgd_step(p, x, y, lr), (PARAMS, XS, YS, 0.1)),
    "train_epoch": (
        lambda p, x, y, lr: fbp.train_epoch(KEY, p, x, y, lr, batch_size=2, weight_decay=1e-3),
        (PARAMS, XS, YS, 0.1),
    ),
    "train_step": (
        lambda p, s, x, y: training.train_step(
            KEY, SGD, p, s, x, y, gradient=per_example.PrivateGradient(1.0, 1.0)
        ),
        (PARAMS, SGD.init(PARAMS), XS, YS),
    ),
    "epoch": (
        lambda p, s, x, y: training.epoch(KEY, SGD, p, s, x, y, batch_size=2),
        (PARAMS, SGD.init(PARAMS), XS, YS),
    ),
    "chain_rule_gradients": (
        fbp.chain_rule_gradients,
        (jnp.ones(3, jnp.float32), jnp.float32(0.5), jnp.float32(1.0)),
    ),
    "per_example_grads": (per_example.per_example_grads, (PARAMS, XS, YS)),
    "per_example_grad_norms": (per_example.per_example_grad_norms, (PARAMS, XS, YS)),
    "clipped_grad": (per_example.clipped_grad, (PARAMS, XS, YS, 1.0)),
    "private_grad": (
        lambda p, x, y: per_example.private_grad(KEY, p, x, y, 1.0, 1.1),
        (PARAMS, XS, YS),
    ),
    "diag_ggn": (curvature.diag_ggn, (PARAMS, XS, YS)),
    "diag_ggn_mc": (
        lambda p, x, y: curvature.diag_ggn_mc(KEY, p, x, y, samples=2, net=SOFTMAX),
        (PARAMS, XS, YS),
    ),
    "kfac_factors": (curvature.kfac_factors, (PARAMS, XS, YS)),
    "batch_diag_ggn": (curvature.batch_diag_ggn, (PARAMS, XS, YS)),
    "batch_diag_ggn_mc": (
        lambda p, x, y: curvature.batch_diag_ggn_mc(KEY, p, x, y, samples=2, net=SOFTMAX),
        (PARAMS, XS, YS),
    ),
    "kfac_factors_mc": (
        lambda p, x, y: curvature.kfac_factors_mc(KEY, p, x, y, samples=2, net=SOFTMAX),
        (PARAMS, XS, YS),
    ),
    "ggn_vector_product": (curvature.ggn_vector_product, (PARAMS, PARAMS, XS, YS)),
    "hessian_vector_product": (curvature.hessian_vector_product, (PARAMS, PARAMS, XS, YS)),
    "diag_hessian": (curvature.diag_hessian, (PARAMS, XS, YS)),
    "sum_grad_squared": (fbp.statistics.sum_grad_squared, (PARAMS, XS, YS)),
    "grad_variance": (fbp.statistics.grad_variance, (PARAMS, XS, YS)),
    "batch_dot": (fbp.statistics.batch_dot, (PARAMS, XS, YS)),
    "gradient_noise_scale": (fbp.statistics.gradient_noise_scale, (PARAMS, XS, YS)),
    "correct": (fbp.diagnostics.correct, (PARAMS, XS, LABELS)),
    "layer_gradient_norms": (fbp.diagnostics.layer_gradient_norms, (PARAMS, XS, YS)),
    "feedback_grad": (
        lambda p, b, x, y: feedback.feedback_grad(p, b, x, y, rule="fa"),
        (PARAMS, FA, XS, YS),
    ),
    "feedback_matrices": (
        lambda p: feedback.feedback_matrices(p, None, rule="brsf", key=KEY),
        (PARAMS,),
    ),
    "alignment_angles": (
        lambda p, b, x, y: feedback.alignment_angles(p, b, x, y, rule="fa"),
        (PARAMS, FA, XS, YS),
    ),
    "poisson_batch": (lambda k: privacy.poisson_batch(k, 64, 0.25, 32), (KEY,)),
    "poisson_epoch": (
        lambda p, s, x, y: privacy.poisson_epoch(
            KEY, SGD, p, s, x, y, sample_rate=0.5, gradient=per_example.PrivateGradient(1.0, 1.1)
        ),
        (PARAMS, SGD.init(PARAMS), XS, YS),
    ),
    "data_parallel_grad": (
        lambda p, x, y: parallel.data_parallel_grad(MESH, p, x, y),
        (PARAMS, XS, YS),
    ),
}

# The layer types (functional_bp.layers) under the functions that take them: a network
# of every type, dropout on, as a convolutional user's step would run.
CONV = fbp.Network(
    activation="relu",
    output_activation="softmax",
    cost="log_likelihood",
    layers=(
        fbp.layers.Conv2D(3, 3, stride=2, padding="same"),
        fbp.layers.MaxPool2D(2),
        fbp.layers.Conv2D(2, 2),
        fbp.layers.AvgPool2D(1),
        fbp.layers.Flatten(),
        fbp.layers.Dropout(0.5),
        fbp.layers.Dense(2),
    ),
)
CONV_PARAMS = fbp.layers.init_network(KEY, CONV, (1, 8, 8))
IMAGES = jax.random.normal(jax.random.key(2), (4, 1, 8, 8), jnp.float32)
LAYER_CASES = {
    "grad with layers": (
        lambda p, x, y: fbp.grad(p, x, y, net=CONV, key=KEY),
        (CONV_PARAMS, IMAGES, LABELS),
    ),
    "per_example_grad_norms with layers": (
        lambda p, x, y: per_example.per_example_grad_norms(p, x, y, net=CONV, key=KEY),
        (CONV_PARAMS, IMAGES, LABELS),
    ),
    "train_step with layers": (
        lambda p, s, x, y: training.train_step(
            KEY, SGD, p, s, x, y, gradient=per_example.PrivateGradient(1.0, 1.0), net=CONV
        ),
        (CONV_PARAMS, SGD.init(CONV_PARAMS), IMAGES, LABELS),
    ),
    "diag_ggn with layers": (
        lambda p, x, y: curvature.diag_ggn(p, x, y, net=CONV.deterministic()),
        (CONV_PARAMS, IMAGES, LABELS),
    ),
    "feedback_grad with layers": (
        lambda p, x, y: feedback.feedback_grad(p, None, x, y, rule="sign", net=CONV, key=KEY),
        (CONV_PARAMS, IMAGES, LABELS),
    ),
}
CASES.update(LAYER_CASES)


def _jitted_public_functions() -> set[str]:
    names = set()
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for attribute in module.__all__:
            fn = getattr(module, attribute)
            if callable(fn) and hasattr(fn, "lower") and not isinstance(fn, type):
                names.add(fn.__name__)
    return names


def test_every_jitted_public_function_has_a_case():
    """A new jitted function joins the table below, or this names it."""
    missing = _jitted_public_functions() - set(CASES)
    assert not missing, f"no portability case for {sorted(missing)}"


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_lowers_for(name, platform):
    fn, args = CASES[name]
    try:
        exported = jax.export.export(jax.jit(fn), platforms=(platform,))(*args)
    except Exception as error:  # the message names the function and the platform
        pytest.fail(f"{name} does not lower for {platform}: {type(error).__name__}: {error}")
    assert exported.platforms == (platform,)
    # What would break a GPU or TPU user: calls back into the host.
    text = exported.mlir_module()
    assert "callback" not in text, f"{name} calls back into Python on {platform}"


def test_an_optax_schedule_traces_through_a_step():
    """Learning rates from a schedule stay device values: the step still exports."""
    optimizer = optax.sgd(optax.linear_schedule(0.1, 0.01, 10))

    def step(p, s, x, y):
        return training.train_step(None, optimizer, p, s, x, y)

    exported = jax.export.export(jax.jit(step), platforms=PLATFORMS)(
        PARAMS, optimizer.init(PARAMS), XS, YS
    )
    assert exported.platforms == PLATFORMS
