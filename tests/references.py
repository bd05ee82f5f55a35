"""Independent references written here from the equations, shared by several test files:
plain-NumPy network.py (column vectors, a loop over the examples of a mini-batch, as in
the chapter's backprop listing) and the learning rules in NumPy."""

import numpy as np

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


def numpy_update_mini_batch(params, xs, ys, eta, lmbda, n, cost):
    """network2.py's update_mini_batch with L2, (1 - eta lmbda / n) w - eta nabla_w,
    looping over the examples (network.py's for lmbda = 0)."""
    mean, _ = network_py_mean_gradient(params, xs, ys, cost)
    return [
        fbp.Layer(
            (1 - eta * lmbda / n) * np.asarray(layer.w) - eta * w, np.asarray(layer.b) - eta * b
        )
        for layer, (w, b) in zip(params, mean)
    ]


def numpy_rule_grad(params, feedback, xs, ys, rule):
    """A learning rule's mean update on network.py's network (sigmoid layers, quadratic
    cost): eq 96 with B^l (fa, kp), sign(w^{l+1}) (sign), or delta^L sent straight to
    every hidden layer through B^l (dfa)."""
    ws = [np.asarray(l.w) for l in params]
    bs = [np.asarray(l.b) for l in params]
    activations, a = [np.asarray(xs)], np.asarray(xs)
    for w, b in zip(ws, bs):
        a = sigmoid(a @ w.T + b)
        activations.append(a)
    a_L = activations[-1]
    delta_L = (a_L - np.asarray(ys)) * a_L * (1 - a_L)
    deltas = [delta_L]
    for l in range(len(ws) - 1, 0, -1):  # hidden layer l, 1-based
        a_l = activations[l]
        if rule == "dfa":
            back = delta_L @ np.asarray(feedback[l - 1])
        else:
            matrix = np.sign(ws[l]) if rule == "sign" else np.asarray(feedback[l - 1])
            back = deltas[0] @ matrix
        deltas.insert(0, back * a_l * (1 - a_l))
    n = xs.shape[0]
    return [fbp.Layer(d.T @ a / n, d.sum(axis=0) / n) for d, a in zip(deltas, activations[:-1])]
