"""How training is going (functional_bp.diagnostics): accuracy and cost, divergence, and
the per-layer gradient sizes of the book's chapter 5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_problem

import functional_bp as fbp
from functional_bp import diagnostics, training
from functional_bp.diagnostics import TrainingDiverged, accuracy, evaluate, total_cost


@pytest.mark.slow
def test_layer_gradient_norms_show_vanishing_sigmoid_gradients():
    sizes = [64, 30, 30, 30, 30, 10]
    params = fbp.init_mlp(jax.random.key(0), sizes, init="scaled_normal", dtype=jnp.float64)
    xs = jax.random.uniform(jax.random.key(1), (100, 64), jnp.float64)
    ys = jax.nn.one_hot(jnp.arange(100) % 10, 10, dtype=jnp.float64)
    norms = diagnostics.layer_gradient_norms(params, xs, ys)
    grads = fbp.grad(params, xs, ys)
    np.testing.assert_allclose(norms.delta, [jnp.linalg.norm(g.b) for g in grads], rtol=1e-12)
    np.testing.assert_allclose(norms.weight_grad, [jnp.linalg.norm(g.w) for g in grads], rtol=1e-12)
    # Eq 85: each sigmoid layer multiplies by sigma' <= 1/4; layer 1 learns slowest.
    assert np.all(np.diff(np.asarray(norms.delta[:-1])) > 0)
    relu = diagnostics.layer_gradient_norms(params, xs, ys, net=fbp.Network("relu", "sigmoid"))
    assert relu.delta[0] / relu.delta[-2] > 10 * norms.delta[0] / norms.delta[-2]


def test_evaluate_accuracy_and_total_cost():
    params, xs, _ = random_problem(7, sizes=[5, 4, 3], batch=25)
    labels = np.random.default_rng(0).integers(0, 3, 25)
    predicted = np.argmax(np.asarray(fbp.mlp(params, xs)), axis=1)
    expected = int(np.sum(predicted == labels))
    assert evaluate(params, xs, labels, batch_size=7) == expected
    assert accuracy(params, xs, labels) == pytest.approx(expected / 25)
    assert int(diagnostics.correct(params, xs, labels)) == expected

    ys = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    plain = float(fbp.loss(params, xs, ys))
    assert total_cost(params, xs, ys, batch_size=6) == pytest.approx(plain, rel=1e-12)
    # network2.py's L2 term lmbda/(2n) sum ||w||^2, with weight_decay = lmbda / n.
    l2 = 0.5 * 2.0 / 25 * sum(float(jnp.sum(layer.w**2)) for layer in params)
    assert total_cost(params, xs, ys, weight_decay=2.0 / 25) == pytest.approx(plain + l2, rel=1e-12)
    assert float(diagnostics.l2_term(params, 2.0 / 25)) == pytest.approx(l2, rel=1e-12)


def test_correct_counts_per_run_under_many():
    _, xs, _ = random_problem(8, sizes=[4, 3], batch=10)
    labels = np.arange(10) % 3
    keys = jax.random.split(jax.random.key(0), 3)
    params = training.many(fbp.init_mlp, per_run=["key"])(keys, [4, 3], dtype=jnp.float64)
    counts = training.many(diagnostics.correct, per_run=["params"])(params, xs, labels)
    for r in range(3):
        single = jax.tree.map(lambda a: a[r], params)
        assert int(counts[r]) == evaluate(single, xs, labels)


def test_evaluate_refuses_one_hot_labels():
    params, xs, ys = random_problem(3, sizes=[4, 10], batch=10)
    with pytest.raises(ValueError, match=r"labels to be class indices.*\(10,\).*one-hot"):
        evaluate(params, xs, ys, batch_size=10)


def test_evaluate_with_one_hot_labels_of_batch_size_classes():
    """The issue's case: 10 classes, batch_size 10, one-hot labels broadcast silently."""
    params = fbp.init_mlp(jax.random.key(0), [4, 10])
    xs = jnp.ones((100, 4))
    one_hot = jnp.asarray(np.eye(10, dtype=np.int32)[np.arange(100) % 10])
    with pytest.raises(ValueError, match="one-hot targets"):
        evaluate(params, xs, one_hot, batch_size=10)


def test_check_divergence_passes_healthy_params():
    params, _, _ = random_problem(9, sizes=[3, 2], batch=1)
    diagnostics.check_divergence(params, 0.5, epoch=1)
    diagnostics.check_divergence(params)
    diagnostics.check_divergence(jax.tree.map(lambda a: a * 1e28, params), 0.5, max_abs=None)
    assert issubclass(TrainingDiverged, FloatingPointError)


KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])
LABELS = np.array([0, 1, 0, 1, 1, 0])

BAD_CASES = [
    # Labels: class indices, one per example, in range.
    (
        "labels one-hot",
        lambda: evaluate(PARAMS, XS, YS.astype(jnp.int32)),
        ValueError,
        r"labels to be class indices.*one-hot",
    ),
    ("labels float", lambda: evaluate(PARAMS, XS, LABELS * 1.0), ValueError, r"labels"),
    ("labels short", lambda: evaluate(PARAMS, XS, LABELS[:5]), ValueError, r"shape \(6,\)"),
    (
        "labels 2-d",
        lambda: evaluate(PARAMS, XS, LABELS[:, None]),
        ValueError,
        r"labels .*shape \(6, 1\)",
    ),
    (
        "labels too big",
        lambda: evaluate(PARAMS, XS, LABELS + 1),
        ValueError,
        r"labels in \[0, 2\).*from 1 to 2",
    ),
    ("labels negative", lambda: evaluate(PARAMS, XS, LABELS - 1), ValueError, r"from -1 to 0"),
    (
        "correct one-hot",
        lambda: diagnostics.correct(PARAMS, XS, YS.astype(jnp.int32)),
        ValueError,
        r"labels to be class indices",
    ),
    (
        "evaluate batch 0",
        lambda: evaluate(PARAMS, XS, LABELS, batch_size=0),
        ValueError,
        r"batch_size",
    ),
    (
        "total_cost weight_decay",
        lambda: total_cost(PARAMS, XS, YS, weight_decay=-1),
        ValueError,
        r"weight_decay",
    ),
    (
        "total_cost batch",
        lambda: total_cost(PARAMS, XS, YS, batch_size=0),
        ValueError,
        r"batch_size",
    ),
    # Divergence, for research code.
    (
        "diverged nan cost",
        lambda: diagnostics.check_divergence(PARAMS, float("nan"), epoch=3),
        TrainingDiverged,
        r"training diverged at epoch 3 \(cost nan\)",
    ),
    (
        "diverged nan params",
        lambda: diagnostics.check_divergence(jax.tree.map(lambda a: a * jnp.nan, PARAMS), 0.5),
        TrainingDiverged,
        r"params not finite",
    ),
    (
        "diverged huge params",
        lambda: diagnostics.check_divergence(
            jax.tree.map(lambda a: a * 1e28, PARAMS), 0.45, epoch=2
        ),
        TrainingDiverged,
        r"at epoch 2 \(cost 0.45, largest \|param\| .*e\+28 > 1e\+06\)",
    ),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
