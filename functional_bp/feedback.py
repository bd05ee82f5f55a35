"""The backward pass as an experiment: eq 96 with other matrices than (w^{l+1})^T.

- ``"fa"``, feedback alignment (Lillicrap et al., Nature Communications 2016): a fixed
  random B^l of the shape of w^{l+1} in place of w^{l+1}:
  delta^l = (B^l)^T delta^{l+1} ⊙ sigma'(z^l).
- ``"dfa"``, direct feedback alignment (Nøkland, NeurIPS 2016): the output error sent
  straight to every hidden layer, delta^l = (B^l)^T delta^L ⊙ sigma'(z^l), B^l of shape
  (n_L, n_l).
- ``"sign"``, sign symmetry (Liao, Leibo and Poggio, AAAI 2016): sign(w^{l+1}) in place
  of w^{l+1}; no feedback matrices.
- ``"kp"``, Kolen-Pollack (Akrout et al., NeurIPS 2019): fa's pass, and B trained with
  the same update as w^{l+1} plus weight decay, so that B converges to w^{l+1}.

delta^L is eqs 90-91 and the weight update eq 99, unchanged: each rule is `hidden_error`
(eq 96) called with another matrix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._options import (
    STATIC,
    ActivationArg,
    CostArg,
    Options,
    prepare,
    with_options_doc,
)
from functional_bp._validation import (
    check_key,
    check_number,
    check_values,
    non_negative,
    positive,
)
from functional_bp.backward import (
    backward_pass,
    batch_hidden_error,
    output_errors,
    summed_gradients,
)
from functional_bp.params import Layer, Params
from functional_bp.training import scan_epoch, sgd_update

Array = jax.Array

RULES = ("fa", "dfa", "sign", "kp")


def _check_rule(rule) -> None:
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; expected one of {list(RULES)}")


def _feedback_shapes(params: Params, rule: str) -> list[tuple[int, int]]:
    """The shape of each feedback matrix, hidden layer 1 first."""
    _check_rule(rule)
    n_out = np.shape(params[-1].w)[0]
    if rule == "dfa":
        return [(n_out, np.shape(layer.w)[0]) for layer in params[:-1]]
    return [tuple(np.shape(layer.w)) for layer in params[1:]]


def _check_feedback(params: Params, feedback, rule: str) -> None:
    """The count and shapes of the matrices, each named by its hidden layer."""
    if rule == "sign":
        return
    expected = _feedback_shapes(params, rule)
    if not isinstance(feedback, (list, tuple)) or len(feedback) != len(expected):
        count = len(feedback) if isinstance(feedback, (list, tuple)) else type(feedback).__name__
        raise ValueError(
            f"Expected {len(expected)} feedback matrices for rule {rule!r} (one per hidden "
            f"layer), got {count}; make them with init_feedback(key, params, {rule!r})"
        )
    for l, (b, shape) in enumerate(zip(feedback, expected), start=1):
        if tuple(np.shape(b)) != shape:
            what = "(n_L, n_l)" if rule == "dfa" else f"w^{l + 1}'s"
            raise ValueError(
                f"Expected the feedback matrix of hidden layer {l} to have shape {shape} "
                f"({what} for rule {rule!r}), got {tuple(np.shape(b))} instead"
            )


def init_feedback(
    key: Array, params: Params, rule: str, *, scale: Optional[float] = None
) -> Optional[list[Array]]:
    """The fixed random feedback matrices of a rule, hidden layer 1 first; None for "sign".

    For "fa" and "kp" entry l-1 has the shape of w^{l+1}, (n_{l+1}, n_l), and replaces it
    in eq 96; for "dfa" it has shape (n_L, n_l). Entries are drawn N(0, scale^2), by
    default scale = 1/sqrt(n_l): the scale of network2.py's initialisation for a layer of
    that fan-in. The size of B sets how fast the hidden layers learn under fa and dfa
    (their updates are proportional to it), so it is a hyperparameter like eta:
    Lillicrap et al. draw from a fixed uniform interval instead.
    """
    check_key(key)
    check_number(scale, "scale", minimum=0, inclusive=False, optional=True)
    shapes = _feedback_shapes(params, rule)
    if rule == "sign":
        return None
    dtype = jnp.result_type(params[0].w)
    keys = jax.random.split(key, len(shapes))
    return [
        jax.random.normal(k, shape, dtype)
        * (1 / jnp.sqrt(jnp.asarray(shape[1], dtype)) if scale is None else scale)
        for k, shape in zip(keys, shapes)
    ]


def _matrices(params: Params, feedback, rule: str) -> list[Array]:
    """What replaces w^{l+1} in eq 96 under "fa", "kp" or "sign", hidden layer 1 first."""
    return [jnp.sign(layer.w) for layer in params[1:]] if rule == "sign" else list(feedback)


def _errors(params: Params, feedback, cache, delta_L: Array, opts: Options, rule: str):
    """[delta^1, ..., delta^L] under a rule: eq 96 with the rule's matrices."""
    if rule == "dfa":  # every hidden layer l gets delta^L through its own B^l
        num_layers = len(params)
        deltas = [
            batch_hidden_error(b, delta_L, cache, opts, l, num_layers)
            for l, b in enumerate(feedback, start=1)
        ]
        return [*deltas, delta_L]
    return backward_pass(params, cache, delta_L, opts, matrices=_matrices(params, feedback, rule))


def mean_feedback_grad(params, feedback, xs, ys, opts: Options, rule: str) -> list[Layer]:
    """The core of `feedback_grad`: the rule's mean update direction over the batch."""
    cache, _, delta_L = output_errors(params, xs, ys, opts, scale=1.0 / xs.shape[0])
    return summed_gradients(_errors(params, feedback, cache, delta_L, opts, rule), cache)


def _prepare(params, feedback, xs, ys, rule, activation, output_activation, cost):
    opts = prepare(params, xs, ys, activation, output_activation, cost, batched=True)
    _check_rule(rule)
    _check_feedback(params, feedback, rule)
    return opts


@functools.partial(jax.jit, static_argnames=("rule",) + STATIC)
@with_options_doc
def feedback_grad(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> list[Layer]:
    """A rule's mean update direction over the mini-batch, in the structure of params:
    delta^L from eqs 90-91, the rule's replacement for eq 96, eq 99 unchanged.

    With ``feedback`` equal to the forward weights (``[l.w for l in params[1:]]`` for
    "fa" and "kp"; ``[params[1].w]`` for "dfa" with one hidden layer) it equals `grad`.

    Args:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices; ignored (may be None) for "sign".
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      rule: "fa", "dfa", "sign" or "kp" (kp's direction is fa's).
      {options}
    """
    opts = _prepare(params, feedback, xs, ys, rule, activation, output_activation, cost)
    return mean_feedback_grad(params, feedback, xs, ys, opts, rule)


class Alignment(NamedTuple):
    """Angles in degrees, layer 1 first.

    Attributes:
      update: (L,): between the rule's weight update of layer l and the true gradient
        (`grad`); 0 for the output layer, whose delta^L every rule shares.
      feedback: (L-1,): between w^{l+1} and the matrix that replaces it (B^l for "fa" and
        "kp", sign(w^{l+1}) for "sign"), as Lillicrap et al. plot; NaN for "dfa", whose
        B^l has another shape.
    """

    update: Array
    feedback: Array


def _angle(a: Array, b: Array) -> Array:
    cosine = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cosine, -1, 1)))


@functools.partial(jax.jit, static_argnames=("rule",) + STATIC)
@with_options_doc
def alignment_angles(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> Alignment:
    """How far a rule is from backprop: per layer the angle between its weight update
    and the true gradient, and between w^{l+1} and its replacement. One forward pass and
    delta^L are shared; the rule's backward pass is the one extra pass over `grad`.

    Args:
      params, feedback, xs, ys, rule: as for `feedback_grad`.
      {options}

    Returns:
      `Alignment`: ``update`` of shape (L,) and ``feedback`` of shape (L-1,), degrees.
    """
    opts = _prepare(params, feedback, xs, ys, rule, activation, output_activation, cost)
    cache, _, delta_L = output_errors(params, xs, ys, opts, scale=1.0 / xs.shape[0])
    true = summed_gradients(backward_pass(params, cache, delta_L, opts), cache)
    rule_grads = summed_gradients(_errors(params, feedback, cache, delta_L, opts, rule), cache)
    update = jnp.stack([_angle(r.w, t.w) for r, t in zip(rule_grads, true)])
    if rule == "dfa":
        between = jnp.full((len(params) - 1,), jnp.nan, update.dtype)
    else:
        matrices = _matrices(params, feedback, rule)
        between = jnp.stack([_angle(b, l.w) for b, l in zip(matrices, params[1:])])
    return Alignment(update, between.astype(update.dtype))


def _feedback_step(params, feedback, xs, ys, eta, weight_decay, opts: Options, rule: str):
    """w <- (1 - eta wd) w - eta Δw with the rule's Δw; for "kp" B^l gets w^{l+1}'s
    update too, so B^l - w^{l+1} shrinks by (1 - eta wd) every step."""
    grads = mean_feedback_grad(params, feedback, xs, ys, opts, rule)
    new = sgd_update(params, grads, eta, weight_decay, 1)  # network2.py's rule, lmbda/n = wd
    if rule == "kp":
        decay = 1 - eta * weight_decay
        feedback = [decay * b - eta * g.w for b, g in zip(feedback, grads[1:])]
    return new, feedback


@check_values(eta=positive, weight_decay=non_negative)
@functools.partial(jax.jit, static_argnames=("rule",) + STATIC)
@with_options_doc
def feedback_step(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    eta: float,
    *,
    rule: str,
    weight_decay: float = 0.0,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> tuple[list[Layer], Optional[list[Array]]]:
    """One SGD step with a rule's update: ``(params, feedback)``, both new.

    w^l <- (1 - eta wd) w^l - eta Δw^l, b^l <- b^l - eta Δb^l with Δ from `feedback_grad`;
    for "kp" (Kolen-Pollack) also B^l <- (1 - eta wd) B^l - eta Δw^{l+1}, the same update
    as w^{l+1}, so with ``weight_decay`` > 0 B^l converges to w^{l+1}. Other rules
    return ``feedback`` unchanged.

    Args:
      params, feedback, xs, ys, rule: as for `feedback_grad`.
      eta: the learning rate.
      weight_decay: wd, on the weights (and on B for "kp"); 0 for none.
      {options}
    """
    opts = _prepare(params, feedback, xs, ys, rule, activation, output_activation, cost)
    return _feedback_step(params, feedback, xs, ys, eta, weight_decay, opts, rule)


@check_values(key=check_key, eta=positive, weight_decay=non_negative)
@functools.partial(jax.jit, static_argnames=("rule", "batch_size") + STATIC)
@with_options_doc
def feedback_epoch(
    key: Array,
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    eta: float,
    *,
    rule: str,
    batch_size: int,
    weight_decay: float = 0.0,
    activation: ActivationArg = "sigmoid",
    output_activation: Optional[ActivationArg] = None,
    cost: CostArg = "quadratic",
) -> tuple[list[Layer], Optional[list[Array]]]:
    """`train_epoch` with a rule's update (`feedback_step`): ``(params, feedback)``.

    Args:
      key: a `jax.random` key for the shuffle.
      params, feedback, rule: as for `feedback_grad`.
      xs, ys: the training set.
      eta, weight_decay: as for `feedback_step`.
      batch_size: examples per mini-batch, as for `train_epoch`.
      {options}
    """
    opts = _prepare(params, feedback, xs, ys, rule, activation, output_activation, cost)

    def step(carry, xb, yb):
        return _feedback_step(*carry, xb, yb, eta, weight_decay, opts, rule)

    return scan_epoch(key, (params, feedback), xs, ys, step, batch_size=batch_size)
