"""functional_bp.laplace against dense matrices built with jax.jacobian and jax.hessian on
a tiny float64 network: the posterior precision, the marginal likelihood and its
maximiser, the GLM predictive's covariance, the Monte-Carlo predictives and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import laplace
from functional_bp.params import Layer

NET = fbp.Network("tanh", "softmax", "log_likelihood")
SIZES = [3, 4, 3]
N = 7
KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, SIZES, init="scaled_normal", dtype=jnp.float64)
XS = jax.random.normal(jax.random.key(1), (N, SIZES[0]), jnp.float64)
LABELS = jnp.array([0, 1, 2, 0, 1, 2, 1])
X_TEST = jax.random.normal(jax.random.key(2), (5, SIZES[0]), jnp.float64)
TAU = 0.7
STRUCTURES = list(laplace.STRUCTURES)


def flatten(params):
    """[w | b] row-major per layer, layer 1 first: the module's order."""
    return jnp.concatenate([jnp.concatenate([p.w, p.b[:, None]], 1).ravel() for p in params])


def unflatten(theta, template):
    out, start = [], 0
    for p in template:
        n_out, m = p.w.shape[0], p.w.shape[1] + 1
        block = theta[start : start + n_out * m].reshape(n_out, m)
        out.append(Layer(block[:, :-1], block[:, -1]))
        start += n_out * m
    return out


def logits(theta, x, template=PARAMS):
    params = unflatten(theta, template)
    a = x
    for l, layer in enumerate(params):
        z = layer.w @ a + layer.b
        a = jnp.tanh(z) if l < len(params) - 1 else z
    return z


def example_cost(z, label):
    return -jax.nn.log_softmax(z)[label]


def dense_jacobians(xs, params=PARAMS):
    theta = flatten(params)
    return jnp.stack([jax.jacobian(logits)(theta, x, params) for x in xs])  # (B, n_L, P)


def dense_ggn_sum():
    """sum_i J_i^T H_i J_i over the training set, all parameters."""
    theta = flatten(PARAMS)
    total = 0.0
    for x, label in zip(XS, LABELS):
        jacobian = jax.jacobian(logits)(theta, x)
        hessian = jax.hessian(example_cost)(logits(theta, x), label)
        total = total + jacobian.T @ hessian @ jacobian
    return total


GGN = dense_ggn_sum()
P_LAST = SIZES[-1] * (SIZES[-2] + 1)


def posterior(structure, tau=TAU, batch_size=3):
    return laplace.fit(
        PARAMS,
        XS,
        LABELS,
        structure=structure,
        prior_precision=tau,
        batch_size=batch_size,
        net=NET,
    )


def covered_jacobians(structure, xs):
    jacobians = dense_jacobians(xs)
    return jacobians[:, :, -P_LAST:] if structure == "last_layer" else jacobians


def test_diag_precision_is_ggn_diagonal_plus_prior():
    expected = jnp.diag(jnp.diag(GGN) + TAU)
    np.testing.assert_allclose(laplace.dense_precision(posterior("diag")), expected, atol=1e-12)


def test_last_layer_precision_is_the_full_ggn_block_plus_prior():
    expected = GGN[-P_LAST:, -P_LAST:] + TAU * jnp.eye(P_LAST)
    np.testing.assert_allclose(
        laplace.dense_precision(posterior("last_layer")), expected, atol=1e-12
    )


def test_kron_precision_from_its_factors_and_factors_from_kfac():
    fitted = posterior("kron")
    whole = fbp.curvature.kfac_factors(PARAMS, XS, LABELS, net=NET)  # one call, all of N
    for got, want in zip(fitted.curvature, whole):
        np.testing.assert_allclose(got.A, want.A, atol=1e-12)
        np.testing.assert_allclose(got.G, want.G, atol=1e-12)
    blocks = [N * jnp.kron(f.G, f.A) + TAU * jnp.eye(f.G.shape[0] * f.A.shape[0]) for f in whole]
    expected = jax.scipy.linalg.block_diag(*blocks)
    np.testing.assert_allclose(laplace.dense_precision(fitted), expected, atol=1e-12)


def test_kron_is_the_exact_block_for_one_example():
    one = laplace.fit(PARAMS, XS[:1], LABELS[:1], structure="kron", prior_precision=TAU, net=NET)
    theta = flatten(PARAMS)
    jacobian = jax.jacobian(logits)(theta, XS[0])
    hessian = jax.hessian(example_cost)(logits(theta, XS[0]), LABELS[0])
    ggn = jacobian.T @ hessian @ jacobian
    dense = laplace.dense_precision(one)
    start = 0
    for size in [4 * 4, 3 * 5]:
        block = slice(start, start + size)
        np.testing.assert_allclose(
            dense[block, block], ggn[block, block] + TAU * jnp.eye(size), atol=1e-12
        )
        start += size


@pytest.mark.parametrize("structure", STRUCTURES)
def test_log_likelihood_is_minus_the_summed_cost(structure):
    expected = -N * fbp.loss(PARAMS, XS, LABELS, net=NET)
    np.testing.assert_allclose(posterior(structure).log_likelihood, expected, rtol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("tau", [0.01, 0.7, 30.0])
def test_marginal_likelihood_matches_dense(structure, tau):
    fitted = posterior(structure)
    precision = np.asarray(laplace.dense_precision(fitted._replace(prior_precision=tau)))
    theta = np.asarray(flatten(PARAMS))
    theta = theta[-P_LAST:] if structure == "last_layer" else theta
    expected = (
        float(fitted.log_likelihood)
        - 0.5 * tau * theta @ theta
        + 0.5 * theta.size * np.log(tau)
        - 0.5 * np.linalg.slogdet(precision)[1]
    )
    np.testing.assert_allclose(
        laplace.log_marginal_likelihood(fitted, tau), expected, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("structure", STRUCTURES)
def test_optimized_prior_precision_maximises_the_marginal_likelihood(structure):
    tuned = laplace.optimize_prior_precision(posterior(structure))
    tau = float(tuned.prior_precision)
    assert 1e-8 < tau < 1e8
    best = laplace.log_marginal_likelihood(tuned)
    for other in (tau * 1.5, tau / 1.5, tau * 1.01, tau / 1.01):
        assert best >= laplace.log_marginal_likelihood(tuned, other)
    # Scanning a grid finds nothing better.
    grid = np.exp(np.linspace(np.log(tau) - 5, np.log(tau) + 5, 201))
    assert best >= max(laplace.log_marginal_likelihood(tuned, t) for t in grid) - 1e-12


def test_optimize_prior_precision_returns_the_bound_when_the_optimum_is_outside():
    tuned = laplace.optimize_prior_precision(posterior("diag"), bounds=(1e3, 1e4))
    np.testing.assert_allclose(float(tuned.prior_precision), 1e3, rtol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_glm_covariance_is_j_inverse_precision_j(structure):
    fitted = posterior(structure)
    mean, covariance = laplace.logit_distribution(fitted, X_TEST, batch_size=2, net=NET)
    jacobians = covered_jacobians(structure, X_TEST)
    inverse = jnp.linalg.inv(laplace.dense_precision(fitted))
    expected = jnp.einsum("bjp,pq,bkq->bjk", jacobians, inverse, jacobians)
    np.testing.assert_allclose(covariance, expected, rtol=1e-10, atol=1e-12)
    theta = flatten(PARAMS)
    np.testing.assert_allclose(mean, jnp.stack([logits(theta, x) for x in X_TEST]), atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_probit_rows_sum_to_one_and_match_the_formula(structure):
    fitted = posterior(structure)
    probabilities = laplace.predict(fitted, X_TEST, net=NET)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-12)
    assert bool(jnp.all((probabilities > 0) & (probabilities < 1)))
    mean, covariance = laplace.logit_distribution(fitted, X_TEST, net=NET)
    variances = jnp.diagonal(covariance, axis1=1, axis2=2)
    expected = jax.nn.softmax(mean / jnp.sqrt(1 + jnp.pi / 8 * variances), axis=-1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_glm_mc_converges_to_the_linearised_predictive(structure):
    """glm_mc against E[softmax(f)], f ~ N(mean, J P^-1 J^T) sampled here from the dense
    covariance: each estimate's standard error is <= 0.5/sqrt(S) = 0.0025, the tolerance
    is 8 of them for the difference."""
    samples = 40_000
    fitted = posterior(structure, tau=0.3)
    probabilities = laplace.predict(
        fitted, X_TEST, method="glm_mc", samples=samples, key=jax.random.key(3), net=NET
    )
    jacobians = covered_jacobians(structure, X_TEST)
    covariance = jnp.einsum(
        "bjp,pq,bkq->bjk", jacobians, jnp.linalg.inv(laplace.dense_precision(fitted)), jacobians
    )
    theta = flatten(PARAMS)
    mean = jnp.stack([logits(theta, x) for x in X_TEST])
    rng = np.random.default_rng(0)
    expected = []
    for m, c in zip(np.asarray(mean), np.asarray(covariance)):
        f = rng.multivariate_normal(m, c, size=samples, method="eigh")
        expected.append(np.asarray(jax.nn.softmax(f, axis=-1)).mean(axis=0))
    np.testing.assert_allclose(probabilities, np.stack(expected), atol=8 * 2 * 0.5 / samples**0.5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_nn_mc_matches_glm_mc_where_the_posterior_is_narrow(structure):
    """With a narrow posterior the network is linear over it: nn_mc and glm_mc agree to
    Monte-Carlo error (the same key: the same noise drives both only loosely, so the
    tolerance is the sum of both errors, 8 standard errors each)."""
    samples = 20_000
    fitted = posterior(structure, tau=50.0)
    glm = laplace.predict(
        fitted, X_TEST, method="glm_mc", samples=samples, key=jax.random.key(4), net=NET
    )
    nn = laplace.predict(
        fitted, X_TEST, method="nn_mc", samples=samples, key=jax.random.key(5), net=NET
    )
    np.testing.assert_allclose(nn, glm, atol=2 * 8 * 0.5 / samples**0.5)
    np.testing.assert_allclose(nn.sum(axis=1), 1, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_samples_have_mean_map_and_covariance_inverse_precision(structure):
    """Mean within 6 standard errors; covariance, scaled to correlations, within
    6 sqrt(2/n)."""
    n = 200_000
    fitted = posterior(structure)
    draws = laplace.sample(fitted, jax.random.key(6), n)
    assert [d.w.shape for d in draws] == [(n, *p.w.shape) for p in PARAMS]
    flat = jax.vmap(flatten)(draws)
    flat = flat[:, -P_LAST:] if structure == "last_layer" else flat
    theta = flatten(PARAMS)
    theta = theta[-P_LAST:] if structure == "last_layer" else theta
    covariance = np.linalg.inv(np.asarray(laplace.dense_precision(fitted)))
    sd = np.sqrt(np.diag(covariance))
    np.testing.assert_array_less(np.abs(flat.mean(axis=0) - theta), 6 * sd / n**0.5)
    sampled = np.cov(np.asarray(flat), rowvar=False)
    scale = np.outer(sd, sd)
    np.testing.assert_array_less(np.abs(sampled - covariance) / scale, 6 * (2 / n) ** 0.5)
    if structure == "last_layer":  # the other layers stay at the MAP
        np.testing.assert_array_equal(draws[0].w[0], PARAMS[0].w)


def test_one_hot_targets_fit_as_labels():
    one_hot = jax.nn.one_hot(LABELS, 3, dtype=jnp.float64)
    for structure in STRUCTURES:
        a = laplace.dense_precision(posterior(structure))
        b = laplace.dense_precision(
            laplace.fit(PARAMS, XS, one_hot, structure=structure, prior_precision=TAU, net=NET)
        )
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_float32_params_give_float32_results():
    params = fbp.init_mlp(KEY, SIZES)
    fitted = laplace.fit(params, XS.astype(jnp.float32), LABELS, structure="kron", net=NET)
    assert fitted.curvature[0].A.dtype == jnp.float32
    assert laplace.predict(fitted, X_TEST.astype(jnp.float32), net=NET).dtype == jnp.float32


@pytest.mark.parametrize("structure", ["diag", "last_layer"])
def test_a_cost_without_closed_form_uses_the_gauss_newton_of_the_outputs(structure):
    """Sigmoid outputs and the quadratic cost: G = sum_i J_i^T H_i J_i with J the Jacobian
    of a^L and H = I, the Hessian of 1/2 ||a - y||^2 in a."""
    net = fbp.Network("tanh", "sigmoid", "quadratic")
    ys = jax.random.uniform(jax.random.key(7), (N, SIZES[-1]), jnp.float64)
    theta = flatten(PARAMS)

    def outputs(theta, x):
        return jax.nn.sigmoid(logits(theta, x))

    ggn = sum(jax.jacobian(outputs)(theta, x).T @ jax.jacobian(outputs)(theta, x) for x in XS)
    fitted = laplace.fit(
        PARAMS, XS, ys, structure=structure, prior_precision=TAU, batch_size=4, net=net
    )
    if structure == "diag":
        expected = jnp.diag(jnp.diag(ggn) + TAU)
    else:
        expected = ggn[-P_LAST:, -P_LAST:] + TAU * jnp.eye(P_LAST)
    np.testing.assert_allclose(laplace.dense_precision(fitted), expected, atol=1e-12)
    np.testing.assert_allclose(
        fitted.log_likelihood, -N * fbp.loss(PARAMS, XS, ys, net=net), rtol=1e-12
    )
