"""functional_bp.laplace: every argument checked before any work, each refusal naming
the argument."""

import jax
import jax.numpy as jnp
import pytest

import functional_bp as fbp
from functional_bp import laplace

KEY = jax.random.key(0)
NET = fbp.Network("tanh", "softmax", "log_likelihood")
PARAMS = fbp.init_mlp(KEY, [3, 4, 2])
XS, LABELS = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
POSTERIOR = laplace.fit(PARAMS, XS, LABELS, net=NET)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(structure="full"), ValueError, "structure"),
        (dict(structure=None), ValueError, "structure"),
        (dict(structure="Diag"), ValueError, "structure"),
        (dict(prior_precision=0.0), ValueError, "prior_precision"),
        (dict(prior_precision=-1.0), ValueError, "prior_precision"),
        (dict(prior_precision=float("nan")), ValueError, "prior_precision"),
        (dict(prior_precision="1"), TypeError, "prior_precision"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(net="relu"), TypeError, "net"),
    ],
    ids=repr,
)
def test_fit_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        laplace.fit(PARAMS, XS, LABELS, **{"net": NET, **kwargs})


@pytest.mark.parametrize(
    ("xs", "ys", "match"),
    [
        (jnp.ones((5, 4)), LABELS, "x to have"),  # n_in of the params is 3
        (jnp.ones(3), LABELS[:1], "x to have"),  # one example, not a batch
        (XS, jnp.ones((5, 3)), "y to have"),  # n_out is 2
        (jnp.ones((0, 3)), jnp.zeros((0, 2)), "xs"),  # no examples
    ],
    ids=["n_in", "unbatched", "n_out", "empty"],
)
def test_fit_data_shapes(xs, ys, match):
    with pytest.raises((TypeError, ValueError), match=match):
        laplace.fit(PARAMS, xs, ys, net=NET)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(method="laplace"), ValueError, "method"),
        (dict(method="probit"), ValueError, "method"),
        (dict(samples=0), ValueError, "samples"),
        (dict(samples=1.5), TypeError, "samples"),
        (dict(method="glm_mc"), ValueError, "key"),
        (dict(method="nn_mc"), ValueError, "key"),
        (dict(method="nn_mc", key=0), TypeError, "key"),
        (dict(batch_size=-1), ValueError, "batch_size"),
        (dict(net=fbp.Network("tanh", "sigmoid", "cross_entropy")), ValueError, "net"),
        (dict(net=fbp.Network("tanh", "softmax", "quadratic")), ValueError, "net"),
        (dict(net="relu"), TypeError, "net"),
    ],
    ids=repr,
)
def test_predict_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        laplace.predict(POSTERIOR, XS, **{"net": NET, **kwargs})


@pytest.mark.parametrize("xs", [jnp.ones((5, 4)), jnp.ones(3)], ids=["n_in", "unbatched"])
def test_predict_inputs(xs):
    with pytest.raises(ValueError, match="x to have"):
        laplace.predict(POSTERIOR, xs, net=NET)


@pytest.mark.parametrize("posterior", [None, (1, 2), POSTERIOR._asdict()], ids=repr)
@pytest.mark.parametrize(
    "function",
    [
        lambda p: laplace.predict(p, XS, net=NET),
        lambda p: laplace.sample(p, KEY, 3),
        lambda p: laplace.optimize_prior_precision(p),
        lambda p: laplace.log_marginal_likelihood(p),
        lambda p: laplace.dense_precision(p),
        lambda p: laplace.logit_distribution(p, XS, net=NET),
    ],
    ids=["predict", "sample", "optimize", "marglik", "dense", "logits"],
)
def test_not_a_posterior(function, posterior):
    with pytest.raises(TypeError, match="posterior"):
        function(posterior)


def test_unknown_structure_in_a_posterior():
    with pytest.raises(ValueError, match="structure"):
        laplace.sample(POSTERIOR._replace(structure="full"), KEY, 2)


@pytest.mark.parametrize(
    ("n", "error"), [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_sample_count(n, error):
    with pytest.raises(error, match="n "):
        laplace.sample(POSTERIOR, KEY, n)


@pytest.mark.parametrize("key", [0, None, jnp.zeros(3, jnp.uint32)], ids=repr)
def test_sample_key(key):
    with pytest.raises(TypeError, match="key"):
        laplace.sample(POSTERIOR, key, 2)


@pytest.mark.parametrize(
    ("tau", "error"),
    [(0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("2", TypeError)],
    ids=repr,
)
def test_marglik_prior_precision(tau, error):
    with pytest.raises(error, match="prior_precision"):
        laplace.log_marginal_likelihood(POSTERIOR, tau)


@pytest.mark.parametrize(
    ("bounds", "error"),
    [
        ((0.0, 1.0), ValueError),
        ((-1.0, 1.0), ValueError),
        ((10.0, 1.0), ValueError),
        ((1.0, 1.0), ValueError),
        (1.0, TypeError),
        ((1.0, 2.0, 3.0), TypeError),
    ],
    ids=repr,
)
def test_optimize_bounds(bounds, error):
    with pytest.raises(error, match="bounds"):
        laplace.optimize_prior_precision(POSTERIOR, bounds=bounds)


@pytest.mark.parametrize("iterations", [0, 1.5], ids=repr)
def test_optimize_iterations(iterations):
    with pytest.raises((TypeError, ValueError), match="iterations"):
        laplace.optimize_prior_precision(POSTERIOR, iterations=iterations)
