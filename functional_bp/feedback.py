r"""The backward pass as an experiment: eq 96 with other matrices than (w^{l+1})^T.

Eq 96 is \( \delta^l = (w^{l+1})^\top \delta^{l+1} \odot \sigma'(z^l) \); each rule
replaces \( w^{l+1} \) by a matrix \( B^l \):

- ``"bp"``, backprop itself: \( B^l = w^{l+1} \); no feedback matrices. Its direction
  is `grad`'s, so that a loop over `RULES` needs no special case.
- ``"fa"``, feedback alignment (Lillicrap et al., Nature Communications 2016): a fixed
  random B^l of the shape of w^{l+1} in place of w^{l+1}:
  delta^l = (B^l)^T delta^{l+1} ⊙ sigma'(z^l), i.e.
  \( \delta^l = (B^l)^\top \delta^{l+1} \odot \sigma'(z^l) \).
- ``"dfa"``, direct feedback alignment (Nøkland, NeurIPS 2016): the output error sent
  straight to every hidden layer, delta^l = (B^l)^T delta^L ⊙ sigma'(z^l), B^l of shape
  (n_L, n_l): \( \delta^l = (B^l)^\top \delta^L \odot \sigma'(z^l) \). For a
  convolution (`functional_bp.layers`) n_l counts the C H W outputs of its own map,
  before any pooling.
- ``"sign"``, sign symmetry (Liao, Leibo and Poggio, AAAI 2016): sign(w^{l+1}) in place
  of w^{l+1}, times an optional ``scale`` s (1 by default); no feedback matrices:
  \( B^l = s \operatorname{sign}(w^{l+1}) \).
- ``"usf"``, uniform sign-concordant feedback (Liao et al.; biotorch's ``usf``): sign's
  pass with biotorch's default scale, the standard deviation of a Xavier
  initialisation: \( B^l = s \operatorname{sign}(w^{l+1}) \),
  \( s = \sqrt{2 / (n_l + n_{l+1})} \).
- ``"frsf"``, fixed random-magnitude sign-concordant feedback (Moskovitz, Litwin-Kumar and
  Abbott 2018; biotorch's ``frsf``): magnitudes \( |R^l| \) drawn once by
  `init_feedback`, signs from the current weights:
  \( B^l = |R^l| \odot \operatorname{sign}(w^{l+1}) \).
- ``"brsf"``, batchwise random-magnitude sign-concordant feedback (same sources): frsf
  with \( R^l \) drawn afresh for every mini-batch from the step's ``key``;
  \( R^l_{jk} \sim \mathcal{U}(-\sqrt{3} s, \sqrt{3} s) \), by default
  \( s = \sqrt{2 / (n_l + n_{l+1})} \) (Xavier-uniform, as biotorch; frsf draws alike).
- ``"kp"``, Kolen-Pollack (Akrout et al., NeurIPS 2019): fa's pass, and B trained with
  the same update as w^{l+1} plus weight decay, so that B converges to w^{l+1}:
  \( B^l \leftarrow B^l - \eta (g_{w^{l+1}} + \lambda B^l) \), with \( g_{w^{l+1}} \) the
  rule's direction for \( w^{l+1} \).

The sign-concordant rules (sign, usf, frsf, brsf) take the signs of the weights of the
step: \( B^l \) tracks \( \operatorname{sign}(w^{l+1}) \) as the weights learn.

delta^L is eqs 90-91 and the weight update eq 99, unchanged: each rule is `hidden_error`
(eq 96) called with another matrix.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core
from functional_bp._validation import check_key, check_number, check_params
from functional_bp.layers import is_dense, layer_types
from functional_bp.layers import shapes as layer_shapes
from functional_bp.network import Network, check_network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "RULES",
    "Alignment",
    "FeedbackParams",
    "RuleGradient",
    "alignment_angles",
    "feedback_grad",
    "feedback_matrices",
    "init_feedback",
]

RULES = ("fa", "dfa", "sign", "kp", "usf", "brsf", "frsf", "bp")
"""The learning rules: feedback alignment, direct feedback alignment, sign symmetry,
Kolen-Pollack, uniform, batchwise-random and fixed-random sign-concordant feedback
(biotorch's names), and backprop."""

# Rules whose matrices init_feedback draws (fa, dfa, kp: B^l; frsf: |R^l|).
_DRAWN = ("fa", "dfa", "kp", "frsf")
# Rules whose B^l comes from the weights at each step; they take the gradient's `scale`.
_SCALED = ("sign", "usf", "brsf")
_FORMS = {
    "bp": "B^l = w^{l+1}",
    "sign": "B^l = scale sign(w^{l+1})",
    "usf": "B^l = scale sign(w^{l+1})",
    "brsf": "B^l = |R^l| sign(w^{l+1}), R^l redrawn from key",
}
_ONE_RUN = {
    "init_feedback": "jax.vmap(lambda k, p: init_feedback(k, p, rule))(keys, params)",
    "feedback_grad": (
        "training.many(feedback.feedback_grad, per_run=['params', 'feedback'])"
        "(params, feedback, xs, ys, rule=rule)"
    ),
    "alignment_angles": (
        "training.many(feedback.alignment_angles, per_run=['params', 'feedback'])"
        "(params, feedback, xs, ys, rule=rule)"
    ),
    "feedback_matrices": (
        "training.many(feedback.feedback_matrices, per_run=['params', 'feedback'])"
        "(params, feedback, rule=rule)"
    ),
}


def _check_rule(rule) -> None:
    if not isinstance(rule, str):
        raise TypeError(
            f"Expected rule to be a str, one of {list(RULES)}, got "
            f"{type(rule).__name__} {rule!r} instead"
        )
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; expected one of {list(RULES)}")


def _check_scale(scale, rule: str, where: str) -> None:
    """The gradient's scale: a number > 0 for sign, usf and brsf; None for the others."""
    check_number(scale, "scale", minimum=0, inclusive=False, optional=True)
    if scale is not None and rule not in _SCALED:
        origin = (
            f"its matrices come from init_feedback(key, params, {rule!r}, scale=...)"
            if rule in _DRAWN
            else "it has no scale"
        )
        raise ValueError(
            f"{where} takes scale for rules {list(_SCALED)} only, got scale={scale!r} with "
            f"rule {rule!r}: {origin}"
        )


def _check_key_for(key, rule: str, where: str) -> None:
    """brsf draws B's magnitudes from the key: required for it, ignored by the others."""
    if key is not None:
        check_key(key)
    elif rule == "brsf":
        raise ValueError(
            f"{where} with rule 'brsf' needs key=jax.random.key(...): brsf redraws its "
            "feedback magnitudes |R^l| from the key at every step (use a new key each step)"
        )


def _check_one_network(params, where: str, net: Optional[Network] = None) -> None:
    """params of one network; a leading run axis (training.many) is named with the fix.
    With ``net.layers`` a convolution's w has rank 4 (filters, C, kh, kw)."""
    rank = 2
    if net is not None and net.layers is not None:
        rank = 2 if is_dense(layer_types(net, 1)[0]) else 4
    if isinstance(params, (list, tuple)) and params:
        layer = params[0]
        if isinstance(layer, tuple) and len(layer) == 2 and np.ndim(layer[0]) > rank:
            hint = (
                " (a Conv2D network's params? pass net=Network(layers=...))"
                if rank == 2 and np.ndim(layer[0]) == 4
                else ""
            )
            raise ValueError(
                f"{where} takes one network's params (layer 1 w of rank {rank}), got layer 1 w "
                f"of shape {np.shape(layer[0])}{hint}: params with a leading run axis "
                f"(training.many, jax.vmap). For many runs use {_ONE_RUN[where]}"
            )
    if net is None or net.layers is None:
        check_params(params)


def _misplaced(where: str, name: str, value) -> None:
    """A rule name given where another argument belongs."""
    if isinstance(value, str):
        raise TypeError(
            f"{where} got {'the rule' if value in RULES else 'the str'} {value!r} as its "
            f"{name} argument; "
            + (
                f"call {where}(key, params, {value!r})"
                if where == "init_feedback"
                else f"pass rule={value!r} (keyword) and feedback="
                + ("None" if value not in _DRAWN else f"init_feedback(key, params, {value!r})")
            )
        )


def _feedback_shapes(
    params: Params, rule: str, net: Optional[Network] = None, input_shape=None
) -> Optional[list[tuple]]:
    """The shape of each matrix init_feedback draws, hidden layer 1 first; None for the
    rules that draw none (sign, usf, brsf, bp). For dfa, (n_L, n_l) with n_l the
    neurons of hidden layer l: a convolution's C H W, known from ``input_shape`` (one
    example's; without it, None stands for what it would give)."""
    _check_rule(rule)
    if rule not in _DRAWN:
        return None
    n_out = np.shape(params[-1].w)[0]
    if rule == "dfa":
        if net is not None and net.layered:
            return [(n_out, n) for n in _hidden_neurons(net, params, input_shape)]
        return [(n_out, np.shape(layer.w)[0]) for layer in params[:-1]]
    return [tuple(np.shape(layer.w)) for layer in params[1:]]


def _hidden_neurons(net: Network, params: Params, input_shape) -> list[Optional[int]]:
    """The neuron count of each hidden layer with weights: n for a `Dense`, C H W of a
    convolution's output map (None without ``input_shape``)."""
    every = None if input_shape is None else layer_shapes(net, tuple(input_shape))
    counts = []
    for k, spec in enumerate(net.layers):
        if spec.has_weights and len(counts) < len(params) - 1:
            if is_dense(spec):
                counts.append(spec.n)
            else:
                counts.append(None if every is None else math.prod(every[k + 1]))
    return counts


def _check_feedback(
    params: Params, feedback, rule: str, net: Optional[Network] = None, input_shape=None
) -> None:
    """The count, shapes and dtypes of the matrices, each named by its hidden layer."""
    expected = _feedback_shapes(params, rule, net, input_shape)
    if expected is None:
        if feedback is not None:
            raise ValueError(
                f"Rule {rule!r} uses no feedback matrices ({_FORMS.get(rule, '')}); "
                f"expected feedback=None, got {type(feedback).__name__} instead"
            )
        return
    if not isinstance(feedback, (list, tuple)) or len(feedback) != len(expected):
        if isinstance(feedback, (list, tuple)):
            count = len(feedback)
        elif hasattr(feedback, "shape"):
            count = f"one array of shape {tuple(np.shape(feedback))} (pass a list)"
        else:
            count = type(feedback).__name__
        hidden = "" if expected else ": the network has no hidden layer"
        raise ValueError(
            f"Expected {len(expected)} feedback matrices for rule {rule!r} (one per hidden "
            f"layer{hidden}), got {count}; make them with init_feedback(key, params, {rule!r})"
        )
    dtype = np.dtype(jnp.result_type(params[0][0]))
    for l, (b, shape) in enumerate(zip(feedback, expected), start=1):
        if not hasattr(b, "shape") or not hasattr(b, "dtype"):
            raise TypeError(
                f"Expected the feedback matrix of hidden layer {l} to be an array, got "
                f"{type(b).__name__} instead"
            )
        got = tuple(np.shape(b))
        if len(got) != len(shape) or any(n is not None and n != m for n, m in zip(shape, got)):
            what = "(n_L, n_l)" if rule == "dfa" else f"w^{l + 1}'s"
            raise ValueError(
                f"Expected the feedback matrix of hidden layer {l} to have shape {shape} "
                f"({what} for rule {rule!r}), got {got} instead"
            )
        b_dtype = b.dtype
        if not jnp.issubdtype(b_dtype, jnp.floating):
            raise TypeError(
                f"Expected the feedback matrix of hidden layer {l} to have a real floating "
                f"dtype, the params' {dtype}, got {b_dtype} instead"
            )
        if np.dtype(b_dtype) != dtype:
            raise TypeError(
                f"Expected the feedback matrix of hidden layer {l} to have the params' dtype "
                f"{dtype}, got {b_dtype} instead (cast it with .astype)"
            )


def _public(where: str):
    """Wraps a function jitted by `jit_with_net`: after its checks of the call (options by
    keyword, ``net``), a rule given as the feedback, a bad rule, scale or key are named
    before the trace."""

    def decorate(jitted):
        signature = inspect.signature(jitted)

        @functools.wraps(jitted)
        def checked(*args, **kwargs):
            jitted.check_call(args, kwargs)
            try:
                arguments = signature.bind_partial(*args, **kwargs).arguments
            except TypeError as error:  # an unknown keyword
                raise TypeError(f"{where}() {error}") from None
            _misplaced(where, "feedback", arguments.get("feedback"))
            if "rule" not in arguments:
                raise TypeError(f"{where}() needs rule=, one of {list(RULES)} (a keyword argument)")
            rule = arguments["rule"]
            _check_rule(rule)
            _check_scale(arguments.get("scale"), rule, where)
            _check_key_for(arguments.get("key"), rule, where)
            return jitted(*args, **kwargs)

        for attribute in ("lower", "trace", "eval_shape", "_cache_size", "clear_cache"):
            setattr(checked, attribute, getattr(jitted, attribute))
        return checked

    return decorate


def init_feedback(
    key: Array,
    params: Params,
    rule: str,
    *,
    scale: Optional[float] = None,
    net: Optional[Network] = None,
    input_shape: Optional[tuple[int, ...]] = None,
) -> Optional[list[Array]]:
    r"""The fixed random feedback matrices of a rule, hidden layer 1 first; None for the
    rules that draw none ("sign", "usf", "brsf", "bp").

    For "fa" and "kp" entry l-1 has the shape of w^{l+1}, (n_{l+1}, n_l), and replaces it
    in eq 96 (for a convolution, the kernel's shape (filters, C, kh, kw): B^l replaces
    w^{l+1} in the transposed convolution); for "dfa" it has shape (n_L, n_l). Entries
    are drawn N(0, scale^2), by default scale = 1/sqrt(fan-in) (n_l, or C kh kw for a
    kernel), \( B_{jk} \sim \mathcal{N}(0, 1/n_l) \): the scale of
    network2.py's initialisation for a layer of that fan-in. The size of B sets how fast
    the hidden layers learn under fa and dfa (their updates are proportional to it), so
    it is a hyperparameter like eta: Lillicrap et al. draw from a fixed uniform interval instead.

    For "frsf" entry l-1 holds the magnitudes \( |R^l| \) of w^{l+1}'s shape, with
    \( R^l_{jk} \sim \mathcal{U}(-\sqrt{3}\,s, \sqrt{3}\,s) \) (standard deviation s =
    ``scale``), by default \( s = \sqrt{2 / (n_l + n_{l+1})} \): biotorch's
    Xavier-uniform draw, bound \( \sqrt{6 / (n_l + n_{l+1})} \). Each step uses
    \( |R^l| \odot \operatorname{sign}(w^{l+1}) \).

    The params are one network's. For params with a leading run axis (from
    `training.many` or `jax.vmap`) map it over the runs:
    ``jax.vmap(lambda k, p: init_feedback(k, p, rule))(keys, params)``.

    Args:
      key: a `jax.random` key.
      params: one network's list of `Layer`.
      rule: one of `RULES`.
      scale: the standard deviation of the draw, > 0 (see above); only for the rules
        that draw ("fa", "dfa", "kp", "frsf"): sign's, usf's and brsf's scale is
        `feedback_grad`'s (or `RuleGradient`'s).
      net: the `Network`; needed for params of a network with ``layers`` (a
        convolution's w has rank 4).
      input_shape: one example's shape, (C, H, W) for images: needed by "dfa" for a
        network with convolutions, whose n_l (C H W of the output map) it sets.

    Raises:
      TypeError: key is not a key, rule not a str (or given as params), params not a
        list of `Layer`.
      ValueError: an unknown rule; params with a run axis; scale <= 0, not finite, or
        given for a rule that draws nothing.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> [b.shape for b in fbp.feedback.init_feedback(jax.random.key(1), params, "fa")]
      [(2, 4)]
      >>> fbp.feedback.init_feedback(jax.random.key(1), params, "sign") is None
      True
      >>> magnitudes = fbp.feedback.init_feedback(jax.random.key(1), params, "frsf")
      >>> bool((magnitudes[0] >= 0).all())
      True
    """
    check_key(key)
    _misplaced("init_feedback", "params", params)
    _check_rule(rule)
    if net is not None:
        check_network(net)
        _check_dfa(net, rule)
    _check_one_network(params, "init_feedback", net)
    check_number(scale, "scale", minimum=0, inclusive=False, optional=True)
    shapes = _feedback_shapes(params, rule, net, input_shape)
    if shapes is not None and any(None in shape for shape in shapes):
        raise ValueError(
            "init_feedback(..., 'dfa') for a network with Conv2D layers needs input_shape= "
            "(one example's shape, (C, H, W)): B^l has n_l = C H W of layer l's output map"
        )
    if shapes is None:
        if scale is not None:
            raise ValueError(
                f"init_feedback draws no matrices for rule {rule!r} ({_FORMS[rule]}), so it "
                f"takes no scale; "
                + (
                    f"pass scale to feedback_grad(..., rule={rule!r}, scale=...) or "
                    f"RuleGradient({rule!r}, scale=...)"
                    if rule in _SCALED
                    else "bp has none"
                )
            )
        return None
    dtype = jnp.result_type(params[0].w)
    keys = jax.random.split(key, len(shapes))
    if rule == "frsf":
        return [
            jnp.abs(
                _uniform(k, shape, dtype, _default_scale(rule, shape) if scale is None else scale)
            )
            for k, shape in zip(keys, shapes)
        ]
    return [
        jax.random.normal(k, shape, dtype)
        * (1 / jnp.sqrt(jnp.asarray(math.prod(shape[1:]), dtype)) if scale is None else scale)
        for k, shape in zip(keys, shapes)
    ]


def _default_scale(rule: str, shape: tuple[int, ...]) -> float:
    """sign: 1; usf, brsf, frsf: the std of a Xavier draw for w^{l+1} of this shape
    (fan-in + fan-out; a kernel's count its receptive field)."""
    if rule == "sign":
        return 1.0
    field = math.prod(shape[2:])
    return math.sqrt(2.0 / ((shape[0] + shape[1]) * field))


def _uniform(key, shape, dtype, scale) -> Array:
    """U(-sqrt(3) s, sqrt(3) s), standard deviation s."""
    bound = jnp.sqrt(jnp.asarray(3.0, dtype)) * jnp.asarray(scale, dtype)
    return jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0) * bound


def _matrices(params: Params, feedback, rule: str, scale=None, key=None) -> list[Array]:
    """B^l, what replaces w^{l+1} in eq 96 (for dfa, the (n_L, n_l) matrices), hidden
    layer 1 first."""
    weights = [layer.w for layer in params[1:]]
    if rule == "bp":
        return weights
    if rule in ("fa", "kp", "dfa"):
        return list(feedback)
    if rule == "frsf":
        return [jnp.abs(r) * jnp.sign(w) for r, w in zip(feedback, weights)]
    dtype = jnp.result_type(params[0].w)

    def size(w):
        return jnp.asarray(_default_scale(rule, w.shape) if scale is None else scale, dtype)

    if rule in ("sign", "usf"):
        return [size(w) * jnp.sign(w) for w in weights]
    # brsf: |R^l| drawn afresh from the key, signs from the weights.
    keys = jax.random.split(key, len(weights)) if weights else []
    return [
        jnp.abs(_uniform(k, w.shape, dtype, size(w))) * jnp.sign(w) for k, w in zip(keys, weights)
    ]


def _errors(net: Network, params, matrices, cache, delta_L: Array, rule: str):
    """[delta^1, ..., delta^L] under a rule: eq 96 with the rule's matrices."""
    if rule == "dfa" and net.layers is not None:  # B^l's columns over z^l's neurons
        deltas = [
            core.activation_error(net, cache, l, (delta_L @ b).reshape(cache.zs[l - 1].shape))
            for l, b in enumerate(matrices, start=1)
        ]
        return [*deltas, delta_L]
    if rule == "dfa":  # every hidden layer l gets delta^L through its own B^l
        deltas = [
            core.hidden_errors(net, b, delta_L, cache, l) for l, b in enumerate(matrices, start=1)
        ]
        return [*deltas, delta_L]
    return core.backward_pass(net, params, cache, delta_L, matrices=matrices)


def _mean_feedback_grad(net: Network, params, feedback, xs, ys, rule, scale, key) -> list[Layer]:
    """The rule's mean update direction over the batch (dropout masks, if the network
    has dropout, from a key split from ``key``)."""
    drop_key = None
    if net.has_dropout and key is not None:
        key, drop_key = jax.random.split(key)
    cache, _, delta_L = core.output_errors(
        net, params, xs, ys, scale=1.0 / xs.shape[0], key=drop_key
    )
    matrices = _matrices(params, feedback, rule, scale, key)
    deltas = _errors(net, params, matrices, cache, delta_L, rule)
    return core.summed_gradients(deltas, cache, net=net)


def _check_dfa(net: Network, rule: str) -> None:
    if rule == "dfa" and net.has_dropout:
        raise ValueError(
            "Rule 'dfa' sends delta^L straight to each hidden layer, past the Dropout of "
            "net.layers, whose masks would then drop nothing of the error: not with dropout. "
            "fa, kp and the sign-concordant rules take it"
        )


def _check(net: Network, params, feedback, xs, ys, rule, where: str) -> None:
    _check_rule(rule)
    _check_dfa(net, rule)
    _check_one_network(params, where, net)
    core.check(net, params, xs, ys, layered=True)
    _check_feedback(params, feedback, rule, net, np.shape(xs)[1:])


@_public("feedback_grad")
@jit_with_net(static=("rule",), half_in_float32=True)
def feedback_grad(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    net: Network = Network(),
    scale: Optional[float] = None,
    key: Optional[Array] = None,
) -> list[Layer]:
    r"""A rule's mean update direction over the mini-batch, in the structure of params:
    delta^L from eqs 90-91, the rule's replacement for eq 96, eq 99 unchanged:
    \( \delta^l = (B^l)^\top \delta^{l+1} \odot \sigma'(z^l) \) with the rule's matrix
    \( B^l \) (`feedback_matrices`) in place of \( w^{l+1} \) (for "dfa",
    \( (B^l)^\top \delta^L \)).

    With ``feedback`` equal to the forward weights (``[l.w for l in params[1:]]`` for
    "fa" and "kp"; ``[params[1].w]`` for "dfa" with one hidden layer) it equals `grad`,
    as "bp" does.

    Args:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices; None for "sign", "usf", "brsf" and "bp".
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      rule: one of `RULES` (keyword; kp's direction is fa's).
      net: the `Network`.
      scale: for "sign", "usf" and "brsf" only: the size s of B^l's entries (> 0):
        \( B^l = s \operatorname{sign}(w^{l+1}) \) for sign (default 1) and usf (default
        \( \sqrt{2/(n_l + n_{l+1})} \)); brsf's \( R^l \) has standard deviation s
        (same default).
      key: a `jax.random` key, required for "brsf" (its \( R^l \) is drawn from it:
        the same key gives the same direction; pass a new one each step); ignored by the
        other rules.

    Raises:
      TypeError: the rule given positionally or as the feedback, or not a str; a feedback
        matrix that is not a float array of the params' dtype.
      ValueError: an unknown rule; feedback of the wrong count or shape; scale <= 0 or
        given to a rule without one; brsf without a key.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> same = fbp.feedback.feedback_grad(params, [params[1].w], xs, ys, rule="fa")
      >>> all(bool(jnp.allclose(f.w, g.w)) for f, g in zip(same, grad(params, xs, ys)))
      True
      >>> key = jax.random.key(1)
      >>> step = fbp.feedback.feedback_grad(params, None, xs, ys, rule="brsf", key=key)
      >>> [g.w.shape for g in step]
      [(4, 3), (2, 4)]
    """
    _check(net, params, feedback, xs, ys, rule, "feedback_grad")
    return _mean_feedback_grad(net, params, feedback, xs, ys, rule, scale, key)


@_public("feedback_matrices")
@jit_with_net(static=("rule",))
def feedback_matrices(
    params: Params,
    feedback: Optional[list[Array]],
    *,
    rule: str,
    scale: Optional[float] = None,
    key: Optional[Array] = None,
    net: Network = Network(),
) -> list[Array]:
    r"""The matrices \( B^l \) a rule sends the error back through, hidden layer 1 first:
    each of w^{l+1}'s shape (n_{l+1}, n_l), for "dfa" of shape (n_L, n_l).

    \( B^l = w^{l+1} \) (bp); \( B^l \) from `init_feedback` (fa, dfa, kp);
    \( B^l = s \operatorname{sign}(w^{l+1}) \) (sign, usf);
    \( B^l = |R^l| \odot \operatorname{sign}(w^{l+1}) \) (frsf: \( |R^l| \) is the
    feedback; brsf: \( R^l \) drawn from ``key``). Arguments as `feedback_grad`'s.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> (b,) = fbp.feedback.feedback_matrices(params, None, rule="usf")
      >>> bool(jnp.allclose(b, jnp.sqrt(2 / 6) * jnp.sign(params[1].w)))
      True
    """
    _check_rule(rule)
    _check_dfa(net, rule)
    _check_one_network(params, "feedback_matrices", net)
    _check_feedback(params, feedback, rule, net)
    return _matrices(params, feedback, rule, scale, key)


class Alignment(NamedTuple):
    """Angles in degrees, layer 1 first.

    Attributes:
      update: (L,): between the rule's weight update of layer l and the true gradient
        (`grad`); 0 for the output layer, whose delta^L every rule shares.
      feedback: (L-1,): between w^{l+1} and the matrix B^l that replaces it
        (`feedback_matrices`), as Lillicrap et al. plot; NaN for "dfa", whose B^l has
        another shape.

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


@_public("alignment_angles")
@jit_with_net(static=("rule",), half_in_float32=True)
def alignment_angles(
    params: Params,
    feedback: Optional[list[Array]],
    xs: Array,
    ys: Array,
    *,
    rule: str,
    net: Network = Network(),
    scale: Optional[float] = None,
    key: Optional[Array] = None,
) -> Alignment:
    r"""How far a rule is from backprop: per layer the angle between its weight update
    and the true gradient, and between w^{l+1} and its replacement B^l,
    \( \arccos \frac{\langle u, v \rangle}{\lVert u \rVert \lVert v \rVert} \) in degrees.
    One forward pass and delta^L are shared; the rule's backward pass is the one extra
    pass over `grad`.

    Args:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices; None for "sign", "usf", "brsf" and "bp".
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      rule: one of `RULES` (keyword).
      net: the `Network`.
      scale: as for `feedback_grad` (sign, usf, brsf); no angle depends on it.
      key: as for `feedback_grad`: required for "brsf", whose B^l it draws.

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
    _check(net, params, feedback, xs, ys, rule, "alignment_angles")
    cache, _, delta_L = core.output_errors(net, params, xs, ys, scale=1.0 / xs.shape[0])
    true = core.summed_gradients(core.backward_pass(net, params, cache, delta_L), cache, net=net)
    matrices = _matrices(params, feedback, rule, scale, key)
    deltas = _errors(net, params, matrices, cache, delta_L, rule)
    rule_grads = core.summed_gradients(deltas, cache, net=net)
    update = jnp.stack([_angle(r.w, t.w) for r, t in zip(rule_grads, true)])
    if rule == "dfa":
        between = jnp.full((len(params) - 1,), jnp.nan, update.dtype)
    else:
        angles = [_angle(b, l.w) for b, l in zip(matrices, params[1:])]
        between = jnp.stack(angles) if angles else jnp.zeros((0,), update.dtype)
    return Alignment(update, between.astype(update.dtype))


class FeedbackParams(NamedTuple):
    """What a learning rule trains: the network's params and the feedback matrices.

    Attributes:
      params: a list of `Layer`.
      feedback: `init_feedback`'s matrices, hidden layer 1 first; None for "sign",
        "usf", "brsf" and "bp".

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
    is zero for "fa", "dfa" and "frsf" (B, or |R|, stays fixed) and, for "kp"
    (Kolen-Pollack), w^{l+1}'s own direction plus ``weight_decay`` B^l: with `optax.sgd`
    B^l gets the same update as w^{l+1} and decays, so with the same decay on the weights
    (`training.sgd(eta, weight_decay)`) B^l - w^{l+1} shrinks by (1 - eta wd) every step:
    \( B^l - w^{l+1} \leftarrow (1 - \eta \lambda) (B^l - w^{l+1}) \).
    "brsf" draws its \( R^l \) from the step's key (`training.epoch` gives each step
    its own; `training.train_step` needs one).

    Example::

        state = FeedbackParams(params, init_feedback(key, params, "kp"))
        optimizer = training.sgd(0.5, weight_decay=1e-4)
        state, opt_state = training.epoch(key, optimizer, state, optimizer.init(state),
            xs, ys, batch_size=10, gradient=RuleGradient("kp", weight_decay=1e-4))

    Attributes:
      rule: one of `RULES` (static).
      weight_decay: kp's decay of B (a leaf: traced); the other rules ignore it.
      scale: sign's, usf's and brsf's scale, as for `feedback_grad` (a leaf); None: the
        rule's default.

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
    scale: Optional[float] = None
    layered = True

    def __call__(self, key, net, state, xs, ys):
        _check_rule(self.rule)
        _check_key_for(key, self.rule, f"RuleGradient({self.rule!r})")
        params, feedback = state
        grads = _mean_feedback_grad(net, params, feedback, xs, ys, self.rule, self.scale, key)
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
        _check(net, state.params, state.feedback, xs, ys, self.rule, "feedback_grad")

    def check_values(self) -> None:
        _check_rule(self.rule)
        check_number(self.weight_decay, "weight_decay", minimum=0)
        _check_scale(self.scale, self.rule, f"RuleGradient({self.rule!r})")
