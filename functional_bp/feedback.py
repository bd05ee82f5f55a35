r"""The backward pass as an experiment: eq 96 with other matrices than (w^{l+1})^T.

Eq 96 is \( \delta^l = (w^{l+1})^\top \delta^{l+1} \odot \sigma'(z^l) \); each rule
replaces \( w^{l+1} \):

- ``"fa"``, feedback alignment (Lillicrap et al., Nature Communications 2016): a fixed
  random B^l of the shape of w^{l+1} in place of w^{l+1}:
  delta^l = (B^l)^T delta^{l+1} ⊙ sigma'(z^l), i.e.
  \( \delta^l = (B^l)^\top \delta^{l+1} \odot \sigma'(z^l) \).
- ``"dfa"``, direct feedback alignment (Nøkland, NeurIPS 2016): the output error sent
  straight to every hidden layer, delta^l = (B^l)^T delta^L ⊙ sigma'(z^l), B^l of shape
  (n_L, n_l): \( \delta^l = (B^l)^\top \delta^L \odot \sigma'(z^l) \).
- ``"sign"``, sign symmetry (Liao, Leibo and Poggio, AAAI 2016): sign(w^{l+1}) in place
  of w^{l+1}; no feedback matrices:
  \( \delta^l = \operatorname{sign}(w^{l+1})^\top \delta^{l+1} \odot \sigma'(z^l) \).
- ``"kp"``, Kolen-Pollack (Akrout et al., NeurIPS 2019): fa's pass, and B trained with
  the same update as w^{l+1} plus weight decay, so that B converges to w^{l+1}:
  \( B^l \leftarrow B^l - \eta (g_{w^{l+1}} + \lambda B^l) \), with \( g_{w^{l+1}} \) the
  rule's direction for \( w^{l+1} \).

delta^L is eqs 90-91 and the weight update eq 99, unchanged: each rule is `hidden_error`
(eq 96) called with another matrix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import check_key, check_number
from functional_bp.network import Network
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "RULES",
    "Alignment",
    "FeedbackParams",
    "RuleGradient",
    "alignment_angles",
    "feedback_grad",
    "init_feedback",
]

RULES = ("fa", "dfa", "sign", "kp")
"""The learning rules: feedback alignment, direct feedback alignment, sign symmetry,
Kolen-Pollack."""


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
    r"""The fixed random feedback matrices of a rule, hidden layer 1 first; None for "sign".

    For "fa" and "kp" entry l-1 has the shape of w^{l+1}, (n_{l+1}, n_l), and replaces it
    in eq 96; for "dfa" it has shape (n_L, n_l). Entries are drawn N(0, scale^2), by
    default scale = 1/sqrt(n_l), \( B_{jk} \sim \mathcal{N}(0, 1/n_l) \): the scale of
    network2.py's initialisation for a layer of that fan-in. The size of B sets how fast
    the hidden layers learn under fa and dfa (their updates are proportional to it), so
    it is a hyperparameter like eta: Lillicrap et al. draw from a fixed uniform interval instead.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> [b.shape for b in fbp.feedback.init_feedback(jax.random.key(1), params, "fa")]
      [(2, 4)]
      >>> fbp.feedback.init_feedback(jax.random.key(1), params, "sign") is None
      True
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


def _errors(net: Network, params: Params, feedback, cache, delta_L: Array, rule: str):
    """[delta^1, ..., delta^L] under a rule: eq 96 with the rule's matrices."""
    if rule == "dfa":  # every hidden layer l gets delta^L through its own B^l
        deltas = [
            core.hidden_errors(net, b, delta_L, cache, l) for l, b in enumerate(feedback, start=1)
        ]
        return [*deltas, delta_L]
    matrices = _matrices(params, feedback, rule)
    return core.backward_pass(net, params, cache, delta_L, matrices=matrices)


def _mean_feedback_grad(net: Network, params, feedback, xs, ys, rule: str) -> list[Layer]:
    """The rule's mean update direction over the batch."""
    cache, _, delta_L = core.output_errors(net, params, xs, ys, scale=1.0 / xs.shape[0])
    return core.summed_gradients(_errors(net, params, feedback, cache, delta_L, rule), cache)


def _check(net: Network, params, feedback, xs, ys, rule) -> None:
    core.check(net, params, xs, ys)
    _check_rule(rule)
    _check_feedback(params, feedback, rule)


@functools.partial(jax.jit, static_argnames=("rule", "net"))
def feedback_grad(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    net: Network = Network(),
) -> list[Layer]:
    r"""A rule's mean update direction over the mini-batch, in the structure of params:
    delta^L from eqs 90-91, the rule's replacement for eq 96, eq 99 unchanged:
    \( \delta^l = M^l \delta^{l+1} \odot \sigma'(z^l) \) with the rule's matrix \( M^l \)
    in place of \( (w^{l+1})^\top \) (for "dfa", \( (B^l)^\top \delta^L \)).

    With ``feedback`` equal to the forward weights (``[l.w for l in params[1:]]`` for
    "fa" and "kp"; ``[params[1].w]`` for "dfa" with one hidden layer) it equals `grad`.

    Args:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices; ignored (may be None) for "sign".
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      rule: "fa", "dfa", "sign" or "kp" (kp's direction is fa's).
      net: the `Network`.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> same = fbp.feedback.feedback_grad(params, [params[1].w], xs, ys, rule="fa")
      >>> all(bool(jnp.allclose(f.w, g.w)) for f, g in zip(same, grad(params, xs, ys)))
      True
    """
    _check(net, params, feedback, xs, ys, rule)
    return _mean_feedback_grad(net, params, feedback, xs, ys, rule)


class Alignment(NamedTuple):
    """Angles in degrees, layer 1 first.

    Attributes:
      update: (L,): between the rule's weight update of layer l and the true gradient
        (`grad`); 0 for the output layer, whose delta^L every rule shares.
      feedback: (L-1,): between w^{l+1} and the matrix that replaces it (B^l for "fa" and
        "kp", sign(w^{l+1}) for "sign"), as Lillicrap et al. plot; NaN for "dfa", whose
        B^l has another shape.

    Examples:
      >>> angles = fbp.feedback.Alignment(update=jnp.zeros(2), feedback=jnp.zeros(1))
      >>> angles.update.shape, angles.feedback.shape
      ((2,), (1,))
    """

    update: Array
    feedback: Array


def _angle(a: Array, b: Array) -> Array:
    cosine = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cosine, -1, 1)))


@functools.partial(jax.jit, static_argnames=("rule", "net"))
def alignment_angles(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    net: Network = Network(),
) -> Alignment:
    r"""How far a rule is from backprop: per layer the angle between its weight update
    and the true gradient, and between w^{l+1} and its replacement,
    \( \arccos \frac{\langle u, v \rangle}{\lVert u \rVert \lVert v \rVert} \) in degrees.
    One forward pass and delta^L are shared; the rule's backward pass is the one extra
    pass over `grad`.

    Args:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices; ignored (may be None) for "sign".
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      rule: "fa", "dfa", "sign" or "kp".
      net: the `Network`.

    Returns:
      `Alignment`: ``update`` of shape (L,) and ``feedback`` of shape (L-1,), degrees.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> feedback = fbp.feedback.init_feedback(jax.random.key(1), params, "fa")
      >>> angles = fbp.feedback.alignment_angles(params, feedback, xs, ys, rule="fa")
      >>> angles.update.shape, angles.feedback.shape
      ((2,), (1,))
    """
    _check(net, params, feedback, xs, ys, rule)
    cache, _, delta_L = core.output_errors(net, params, xs, ys, scale=1.0 / xs.shape[0])
    true = core.summed_gradients(core.backward_pass(net, params, cache, delta_L), cache)
    rule_grads = core.summed_gradients(_errors(net, params, feedback, cache, delta_L, rule), cache)
    update = jnp.stack([_angle(r.w, t.w) for r, t in zip(rule_grads, true)])
    if rule == "dfa":
        between = jnp.full((len(params) - 1,), jnp.nan, update.dtype)
    else:
        matrices = _matrices(params, feedback, rule)
        between = jnp.stack([_angle(b, l.w) for b, l in zip(matrices, params[1:])])
    return Alignment(update, between.astype(update.dtype))


class FeedbackParams(NamedTuple):
    """What a learning rule trains: the network's params and the feedback matrices.

    Attributes:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices, hidden layer 1 first; None for "sign".

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> state = fbp.feedback.FeedbackParams(params, [params[1].w])
      >>> len(state.params), state.feedback[0].shape
      (2, (2, 4))
    """

    params: Params
    feedback: Optional[list[Array]]


@core.gradient_class
class RuleGradient(core.Gradient):
    r"""A learning rule as a training gradient, on `FeedbackParams`.

    The direction of the params is `feedback_grad`'s. The feedback matrices' direction
    is zero for "fa" and "dfa" (B stays fixed) and, for "kp" (Kolen-Pollack), w^{l+1}'s
    own direction plus ``weight_decay`` B^l: with `optax.sgd` B^l gets the same update
    as w^{l+1} and decays, so with the same decay on the weights (`training.sgd(eta,
    weight_decay)`) B^l - w^{l+1} shrinks by (1 - eta wd) every step:
    \( B^l - w^{l+1} \leftarrow (1 - \eta \lambda) (B^l - w^{l+1}) \).

    Example::

        state = FeedbackParams(params, init_feedback(key, params, "kp"))
        optimizer = training.sgd(0.5, weight_decay=1e-4)
        state, opt_state = training.epoch(key, optimizer, state, optimizer.init(state),
            xs, ys, batch_size=10, gradient=RuleGradient("kp", weight_decay=1e-4))

    Attributes:
      rule: "fa", "dfa", "sign" or "kp" (static).
      weight_decay: kp's decay of B (a leaf: traced).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> state = fbp.feedback.FeedbackParams(params, [params[1].w])
      >>> step = fbp.feedback.RuleGradient("kp", weight_decay=1e-4)(None, Network(), state, xs, ys)
      >>> [g.w.shape for g in step.params], step.feedback[0].shape
      ([(4, 3), (2, 4)], (2, 4))
    """

    rule: str = dataclasses.field(metadata={"static": True})
    weight_decay: float = 0.0

    def __call__(self, key, net, state, xs, ys):
        params, feedback = state
        grads = _mean_feedback_grad(net, params, feedback, xs, ys, self.rule)
        if feedback is None:
            return FeedbackParams(grads, None)
        if self.rule == "kp":
            moves = [g.w + self.weight_decay * b for b, g in zip(feedback, grads[1:])]
        else:
            moves = [jnp.zeros_like(b) for b in feedback]
        return FeedbackParams(grads, moves)

    def check(self, net, state, xs, ys) -> None:
        if not isinstance(state, FeedbackParams):
            raise TypeError(
                f"Expected params to be a feedback.FeedbackParams(params, feedback) for "
                f"RuleGradient({self.rule!r}), got {type(state).__name__} instead"
            )
        _check(net, state.params, state.feedback, xs, ys, self.rule)

    def check_values(self) -> None:
        _check_rule(self.rule)
        check_number(self.weight_decay, "weight_decay", minimum=0)
