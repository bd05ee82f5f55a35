"""An independent plain-NumPy network.py, written here from the equations: column vectors
and a loop over the examples of a mini-batch, as in the chapter's backprop listing."""

import numpy as np
import pytest
from conftest import random_problem

import functional_bp as fbp


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


def network_py_backprop(biases, weights, x, y, cost):
    """network.py's backprop (and network2.py's CrossEntropyCost.delta)."""
    nabla_b = [np.zeros(b.shape) for b in biases]
    nabla_w = [np.zeros(w.shape) for w in weights]
    activation = x
    activations = [x]
    zs = []
    for b, w in zip(biases, weights):
        z = np.dot(w, activation) + b
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    if cost == "quadratic":
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])
    else:  # cross_entropy
        delta = activations[-1] - y
    nabla_b[-1] = delta
    nabla_w[-1] = np.dot(delta, activations[-2].transpose())
    for l in range(2, len(weights) + 1):
        sp = sigmoid_prime(zs[-l])
        delta = np.dot(weights[-l + 1].transpose(), delta) * sp
        nabla_b[-l] = delta
        nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
    return nabla_b, nabla_w


def network_py_mean_gradient(params, xs, ys, cost):
    """update_mini_batch's summed nabla, divided by the mini-batch size."""
    biases = [np.asarray(layer.b, np.float64).reshape(-1, 1) for layer in params]
    weights = [np.asarray(layer.w, np.float64) for layer in params]
    sum_b = [np.zeros(b.shape) for b in biases]
    sum_w = [np.zeros(w.shape) for w in weights]
    per_example = []
    for x, y in zip(xs, ys):
        delta_b, delta_w = network_py_backprop(
            biases, weights, np.asarray(x).reshape(-1, 1), np.asarray(y).reshape(-1, 1), cost
        )
        per_example.append((delta_b, delta_w))
        sum_b = [nb + dnb for nb, dnb in zip(sum_b, delta_b)]
        sum_w = [nw + dnw for nw, dnw in zip(sum_w, delta_w)]
    mean = [(w / len(xs), b.ravel() / len(xs)) for w, b in zip(sum_w, sum_b)]
    return mean, per_example


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
@pytest.mark.parametrize("seed", range(4))
def test_backprop_and_grad_equal_numpy_network_py(cost, seed):
    sizes = [[784, 30, 10], [5, 1, 3], [7, 6, 5, 4, 3], [2, 2]][seed]
    params, xs, ys = random_problem(seed, sizes=sizes, batch=5)
    mean, per_example = network_py_mean_gradient(params, xs, ys, cost)

    for i, (delta_b, delta_w) in enumerate(per_example):
        manual = fbp.backprop(params, xs[i], ys[i], cost=cost)
        for layer, nb, nw in zip(manual, delta_b, delta_w):
            np.testing.assert_allclose(layer.w, nw, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(layer.b, nb.ravel(), rtol=1e-10, atol=1e-14)

    for layer, (w, b) in zip(fbp.grad(params, xs, ys, cost=cost), mean):
        np.testing.assert_allclose(layer.w, w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-14)
