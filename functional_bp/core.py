"""The core every family is built on: one batched forward pass, delta^L per example, eq 96
back to layer 1, and the record of it all.

`backprop_batch` returns a `Record` (the forward `Cache` and every delta^l, each with a
leading batch axis); `grad`, the per-example norms, the statistics, the curvature and the
learning rules are each a few lines on it. Build your own quantity the same way: check
the input with `check`, run the core, reduce the record. For example the per-layer Gram
matrix of the per-example gradients, <g_i^l, g_j^l> = (delta_i . delta_j)(a_i . a_j + 1)
(eq 99 is an outer product, so no per-example gradient is formed)::

    import functools, jax
    from functional_bp import Network, core

    @functools.partial(jax.jit, static_argnames="net")
    def layer_gram(params, xs, ys, *, net=Network()):
        core.check(net, params, xs, ys)
        record = core.backprop_batch(net, params, xs, ys)
        return [(d @ d.T) * (a @ a.T + 1)
                for d, a in zip(record.deltas, record.cache.activations)]

Core functions take ``net`` first and run inside your trace: they check nothing
(`check` does, once, at trace time).

Layer types. A layer type provides the three steps of the documents' derivation
(`LayerType`): its forward map, its transport of the error (eq 96's (w^{l+1})^T
delta^{l+1}), and its parameter gradient (eq 99). A dense-only network runs `Dense`'s,
one example at a time under `jax.vmap`; a network with ``layers``
(`functional_bp.layers`) runs each layer type's on the whole batch, and its `Cache`
also holds what pooling and dropout need on the way back (``stages``). ``deltas`` and
``cache.activations`` keep one meaning for both: delta^l of each layer with weights,
and the input of each (then a^L). A function written for dense layers only calls
``check(..., layered=False)``, which refuses convolution, pooling and dropout by name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._validation import (
    check_data,
    check_float_dtype,
    check_nonempty,
    check_params,
    check_targets,
)
from functional_bp.equations import hidden_error, output_error
from functional_bp.layers import (
    Dense,
    Dropout,
    Flatten,
    check_layered_params,
    describe,
    layer_types,
    shapes,
)
from functional_bp.network import (
    DenseOnlyError,
    KeyRequiredError,
    Network,
    check_contracts,
    check_network,
)
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = [
    "Cache",
    "Dense",
    "Gradient",
    "LayerType",
    "MeanGradient",
    "Record",
    "activation_error",
    "backprop_batch",
    "backward_pass",
    "check",
    "check_drawn",
    "example_costs",
    "forward_pass",
    "gradient_class",
    "hidden_errors",
    "mean_cost",
    "mean_value_and_grad",
    "input_error",
    "layer_terms",
    "output_errors",
    "per_example_gradients",
    "summed_gradients",
    "targets",
    "working_precision",
]


class LayerType(Protocol):
    r"""What a layer type provides: the three steps the documents derive for a dense layer.

    - ``forward(layer, a_prev)``: z^l from a^{l-1} (001 notes eq 1; chapter 10 eq 77),
      for a dense layer \(z^l = w^l a^{l-1} + b^l\).
    - ``transport(weights, delta_next, a)``: dC/da^l from delta^{l+1}, the (w^{l+1})^T
      delta^{l+1} of eq 96 (001 notes eq 8), \(\nabla_{a^l} C = (w^{l+1})^T
      \delta^{l+1}\); delta^l is this ⊙ sigma'(z^l). A learning rule
      (`functional_bp.feedback`) passes other ``weights``.
    - ``gradient(delta, a_prev)``: dC/dw^l and dC/db^l from delta^l and a^{l-1} (eq 99
      and eq 7), \(\partial C / \partial w^l = \delta^l (a^{l-1})^T\) and
      \(\partial C / \partial b^l = \delta^l\), summed over any leading batch axes.

    Examples:
      >>> all(hasattr(fbp.core.Dense, step) for step in ("forward", "transport", "gradient"))
      True
    """

    def forward(self, layer: Layer, a_prev: Array) -> Array: ...

    def transport(self, weights: Array, delta_next: Array, a: Array) -> Array: ...

    def gradient(self, delta: Array, a_prev: Array) -> Layer: ...


class Cache(NamedTuple):
    """What the backward pass needs, layer by layer (network.py's ``zs``, ``activations``).

    Attributes:
      zs: [z^1, ..., z^L], the weighted inputs (the chapter's h^(l)) of the layers with
        weights.
      activations: [a^0 = x, a^1, ..., a^L]: the input of each layer with weights, then
        the output. With pooling or dropout between two layers, the input of layer l+1
        is the pooled (or dropped-out) sigma(z^l).
      stages: None for a dense-only network; with ``layers``, one entry per layer type:
        sigma(z) after a layer with weights, the input of a pooling or `Flatten` layer,
        the mask of a `Dropout` (None without a key).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> [z.shape for z in cache.zs], [a.shape for a in cache.activations]
      ([(5, 4), (5, 2)], [(5, 3), (5, 4), (5, 2)])
    """

    zs: list[Array]
    activations: list[Array]
    stages: Optional[list] = None


class Record(NamedTuple):
    """The core's result for a batch.

    Attributes:
      cache: the forward `Cache`, every array (batch, n_l).
      ys: the targets in the params' dtype.
      deltas: [delta^1, ..., delta^L], each (batch, n_l).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> [delta.shape for delta in record.deltas], record.ys.shape
      ([(5, 4), (5, 2)], (5, 2))
    """

    cache: Cache
    ys: Array
    deltas: list[Array]


def check(
    net: Network,
    params: Params,
    xs,
    ys=None,
    *,
    batched: Optional[bool] = True,
    layered: bool = False,
    name: Optional[str] = None,
):
    """Checks what a public function was given, before any maths; returns the layer sizes
    (for a network with ``layers``: the input's and each layer with weights' neuron counts).

    Run it at trace time inside your jitted function: a later call with the same shapes
    and ``net`` costs nothing. ``batched``: True for xs of shape (batch, n_in), False for
    one example (n_in,), None for either. With ``ys`` and a batch, the batch must hold an
    example (a mean over none is undefined). ``layered``: whether the caller handles
    convolution, pooling and dropout (`functional_bp.layers`); if not, a network holding
    one is refused, naming the layer (and ``name``, the function, when given; a function
    jitted by `functional_bp.network.jit_with_net` is named without it). Errors name
    the layer and the shapes.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> fbp.core.check(Network(), params, xs, ys)
      [3, 4, 2]
    """
    check_network(net)
    if net.layers is None:
        sizes = check_params(params)
        check_data(sizes, xs, ys, batched=batched)
    else:
        sizes = _check_layered(net, params, xs, ys, batched, layered, name)
    if batched and ys is not None:
        check_nonempty(xs)
    dtype = np.dtype(jnp.result_type(params[0][0]))
    check_contracts(net, tuple(sizes), dtype, ys is not None)
    return sizes


DENSE_ONLY = 'the guide\'s "Layer types" page lists every function that takes them'


def example_ndim(net: Network) -> Optional[int]:
    """The rank of one example: 1 for a vector, 3 for an image (C, H, W) before a
    `Conv2D` or pooling; None where a network starting with `Flatten` takes any.

    Examples:
      >>> fbp.core.example_ndim(Network())
      1
    """
    if net.layers is None:
        return 1
    return {Dense: 1, Flatten: None}.get(type(_first_layer(net)), 3)  # images: Conv2D, pooling


def _first_layer(net: Network):
    """The first layer type that sets the input's shape (dropout takes any)."""
    return next((s for s in net.layers if type(s) is not Dropout), net.layers[-1])


def _check_layered(net: Network, params, xs, ys, batched, layered: bool, name=None) -> list[int]:
    if net.layered and not layered:
        k, spec = next((k, s) for k, s in enumerate(net.layers, 1) if type(s) is not Dense)
        raise DenseOnlyError(
            f"{name or 'This function'} takes dense layers only; net.layers has "
            f"{describe(spec)} at layer "
            f"{k}. Convolution, pooling and dropout work with the gradient, the per-example "
            f"and statistics families, the learning rules, the diagonal GGN and data-parallel "
            f"gradients ({DENSE_ONLY})"
        )
    if not hasattr(xs, "shape"):
        raise TypeError(f"Expected x to be an array, got {type(xs).__name__} instead")
    first = _first_layer(net)
    rank = example_ndim(net)
    x_shape = tuple(np.shape(xs))
    one = batched is False or (batched is None and rank is not None and len(x_shape) == rank)
    input_shape = x_shape if one else x_shape[1:]
    if (not one and len(x_shape) < 2) or (rank is not None and len(input_shape) != rank):
        expected = "(C, H, W)" if rank == 3 else "(n_in,)"
        batch = f"(batch, {expected[1:]}"
        forms = {True: batch, False: expected, None: f"{expected} or {batch}"}
        raise ValueError(
            f"Expected x to have shape {forms[batched]} for a network whose first layer is "
            f"{describe(first)}, got {x_shape} instead"
        )
    check_float_dtype(jnp.result_type(xs), "x")
    check_layered_params(net, params, input_shape)
    every = shapes(net, input_shape)
    sizes = [math.prod(input_shape)] + [
        math.prod(every[k + 1]) for k, spec in enumerate(net.layers) if spec.has_weights
    ]
    if ys is not None:
        check_targets(ys, x_shape[: len(x_shape) - len(input_shape)], sizes[-1], x_shape)
    return sizes


def _forward_one(net: Network, params: Params, x: Array) -> Cache:
    """Eqs 1-2 of the 001 notes, layer by layer, for one example x of shape (n_in,)."""
    a = x.astype(params[0].w.dtype)
    zs, activations = [], [a]
    for l, layer in enumerate(params, start=1):
        z = Dense.forward(layer, a)
        a = net.layer_activation(l, len(params)).fn(z)
        zs.append(z)
        activations.append(a)
    return Cache(zs, activations)


def _per_neuron(fn, *arrays: Array) -> Array:
    """An `Activation`'s function of one example's neurons, for every example: a layer of
    images is flattened to its C H W neurons first (a softmax or a user's activation
    that reduces sees the whole layer), and the result takes the shape back."""
    shape = arrays[0].shape
    flat = [a.reshape(shape[0], math.prod(shape[1:])) for a in arrays]  # batch 0 too
    return jax.vmap(fn)(*flat).reshape(shape)


def _forward_layers(net: Network, params: Params, xs: Array, key) -> Cache:
    """Each layer type's forward map on the batch, in order; sigma after each layer with
    weights; dropout masks drawn from ``key`` (none without it)."""
    a = xs.astype(params[0].w.dtype)
    drops = sum(type(spec) is Dropout for spec in net.layers)
    keys = iter(jax.random.split(key, drops)) if key is not None and drops else None
    zs, activations, stages = [], [], []
    for spec in net.layers:
        if spec.has_weights:
            l = len(zs) + 1
            activations.append(a)
            z = spec.forward(params[l - 1], a)
            a = _per_neuron(net.layer_activation(l, len(params)).fn, z)
            zs.append(z)
            stages.append(a)
        elif type(spec) is Dropout:
            mask = None if keys is None else spec.mask(next(keys), a.shape, a.dtype)
            a = a if mask is None else a * mask
            stages.append(mask)
        else:
            stages.append(a)
            a = spec.apply(a)
    activations.append(a)
    return Cache(zs, activations, stages)


def forward_pass(net: Network, params: Params, xs: Array, *, key: Optional[Array] = None) -> Cache:
    r"""The forward pass of every row of xs (batch, n_in): `jax.vmap` of one example's.

    Eqs 1-2 of the 001 notes for every example, \(z^l = w^l a^{l-1} + b^l\) and
    \(a^l = \sigma(z^l)\). With ``net.layers``, each layer type's forward map on the
    whole batch; ``key`` draws the `Dropout` masks (without it dropout is the identity).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> cache.activations[-1].shape
      (5, 2)
    """
    if net.layers is not None:
        return _forward_layers(net, params, xs, key)
    return jax.vmap(lambda x: _forward_one(net, params, x))(xs)


def targets(ys: Array, outputs: Array) -> Array:
    """ys as targets of the outputs' shape and dtype: integer class labels become one-hot
    vectors (label k: y_k = 1, the others 0), one-hot or real targets are cast.

    Examples:
      >>> fbp.core.targets(jnp.array([2, 0]), jnp.zeros((2, 3), jnp.float32))
      Array([[0., 0., 1.],
             [1., 0., 0.]], dtype=float32)
    """
    if jnp.issubdtype(ys.dtype, jnp.integer):
        return jax.nn.one_hot(ys, outputs.shape[-1], dtype=outputs.dtype)
    return ys.astype(outputs.dtype)


def working_precision(params: Params, xs: Array, ys: Array):
    """``(dtype, (params, xs, ys))``: the params' dtype, and the inputs in at least float32
    (float16 and bfloat16 cast up, float32 and float64 as they are; integer class labels
    stay labels). Statistics and curvature compute in it and cast back to ``dtype``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2], dtype=jnp.float16)
      >>> xs, labels = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
      >>> dtype, (params, xs, ys) = fbp.core.working_precision(params, xs, labels)
      >>> dtype, params[0].w.dtype, ys.dtype
      (dtype('float16'), dtype('float32'), dtype('int32'))
    """
    dtype = jnp.result_type(params[0].w)
    work = jnp.promote_types(dtype, jnp.float32)
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf).astype(work), params)
    ys = jnp.asarray(ys)
    if not jnp.issubdtype(ys.dtype, jnp.integer):
        ys = ys.astype(work)
    return dtype, (params, jnp.asarray(xs).astype(work), ys)


def example_costs(net: Network, cache: Cache, ys: Array) -> Array:
    """C of every example, shape (batch,): ``cost.fn(a^L, y)``, or its closed form in z^L.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> cache = fbp.core.forward_pass(Network(), params, xs)
      >>> fbp.core.example_costs(Network(), cache, ys).shape
      (5,)
    """
    form = net.cost.closed_form(net.output_activation)

    def one(z_L, a_L, y):
        return net.cost.fn(a_L, y) if form is None else form.fn(z_L, y)

    return jax.vmap(one)(cache.zs[-1], cache.activations[-1], ys)


def hidden_errors(net: Network, weights: Array, delta_next: Array, cache: Cache, l: int):
    r"""`hidden_error` (eq 96) at hidden layer l for every example: delta_next (batch, n)
    transported through ``weights`` (w^{l+1}, or a learning rule's matrix), then ⊙
    sigma'(z^l).

    \[ \delta^l = (w^{l+1})^T \delta^{l+1} \odot \sigma'(z^l) \]

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> fbp.core.hidden_errors(Network(), params[1].w, jnp.ones((5, 2)), cache, 1).shape
      (5, 4)
    """
    one = functools.partial(hidden_error, weights, net=net)
    return jax.vmap(one)(delta_next, cache.zs[l - 1], cache.activations[l])


def backward_pass(
    net: Network,
    params: Params,
    cache: Cache,
    delta_L: Array,
    *,
    matrices: Optional[list[Array]] = None,
) -> list[Array]:
    r"""[delta^1, ..., delta^L] from delta^L (batch, n_L): eq 96 from layer L-1 down to 1.

    \[ \delta^l = (w^{l+1})^T \delta^{l+1} \odot \sigma'(z^l), \qquad l = L-1, \dots, 1 \]

    ``matrices``, when given, replaces w^{l+1} in eq 96 layer by layer (entry l-1 for
    layer l, each of the shape of w^{l+1}): the backward pass of feedback alignment. With
    ``net.layers``, each layer type's transport replaces (w^{l+1})^T delta^{l+1}, and
    pooling, `Flatten` and `Dropout` route the error between layers.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> deltas = fbp.core.backward_pass(Network(), params, cache, jnp.ones((5, 2)))
      >>> [delta.shape for delta in deltas]
      [(5, 4), (5, 2)]
    """
    matrices = [layer.w for layer in params[1:]] if matrices is None else matrices
    if net.layers is not None:
        check_drawn(net, cache)
        return _backward_layers(net, cache, delta_L, matrices)
    deltas = [delta_L]
    for l in range(len(params) - 1, 0, -1):  # params[l] is layer l+1
        deltas.insert(0, hidden_errors(net, matrices[l - 1], deltas[0], cache, l))
    return deltas


def _backward_layers(net: Network, cache: Cache, delta_L: Array, matrices) -> list[Array]:
    """Eq 96 carried over: from the last layer type to the first, the error dC/da goes
    back through each (transport through weights, routing through pooling, `Flatten` and
    `Dropout`) and becomes delta^l = dC/da^l ⊙ sigma'(z^l) below each layer with weights."""
    num_layers = len(cache.zs)
    deltas = [delta_L]
    if num_layers == 1:
        return deltas
    l = num_layers  # the layer with weights whose delta is deltas[0]
    g = None
    for k in range(len(net.layers) - 1, 0, -1):
        g = _error_below(
            net.layers[k], cache, k, l, deltas[0], g, matrices[l - 2] if l > 1 else None
        )
        if net.layers[k].has_weights:
            l -= 1
        if net.layers[k - 1].has_weights:  # g is dC/da^l, a^l = sigma(z^l): eq 96's ⊙
            deltas.insert(0, activation_error(net, cache, l, g))
            if l == 1:
                break
    return deltas


def check_drawn(net: Network, cache: Cache) -> None:
    """Trace time: every layer that draws from a key (`Dropout`) drew in the forward pass
    whose ``cache`` the backward pass is given; else `KeyRequiredError`, naming the layer.
    Without its masks a gradient would be that of the network without dropout, silently.

    Examples:
      >>> net = Network(layers=(fbp.layers.Dense(4), fbp.layers.Dropout(0.5), fbp.layers.Dense(2)))
      >>> params = fbp.layers.init_network(jax.random.key(0), net, (3,))
      >>> fbp.core.check_drawn(net, fbp.core.forward_pass(net, params, jnp.ones((5, 3))))
      Traceback (most recent call last):
      functional_bp.network.KeyRequiredError: This function needs a key: net.layers[1] is ...
    """
    if net.layers is None:
        return
    for k, spec in enumerate(net.layers):
        if spec.random and cache.stages[k] is None:
            raise KeyRequiredError(
                f"This function needs a key: net.layers[{k}] is {describe(spec)}, "
                f"which draws its masks from one, and none was given, so the result would be "
                f"that of the network without it. Give a jax.random key (key=, or the key of "
                f"a training step), or pass net=net.deterministic() to differentiate the "
                f"network without dropout on purpose (what evaluation runs)"
            )


def _error_below(spec, cache: Cache, k: int, l: int, delta: Array, g, weights) -> Array:
    """dC/d(input of layer type k) from the error at its output: transport through
    ``weights`` for layer l with weights (delta is delta^l), else the type's routing."""
    if spec.has_weights:
        return spec.transport(weights, delta, cache.activations[l - 1])
    if type(spec) is Dropout:
        return g if cache.stages[k] is None else g * cache.stages[k]
    return spec.route(g, cache.stages[k])


def activation_error(net: Network, cache: Cache, l: int, g: Array) -> Array:
    r"""delta^l = g ⊙ sigma'(z^l) for every example, g = dC/da^l of layer l's own output
    (before any pooling or dropout): eq 96's last factor, with the error brought by
    whatever replaces its transport (direct feedback alignment's B^l).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> fbp.core.activation_error(Network(), cache, 1, jnp.ones((5, 4))).shape
      (5, 4)
    """
    act = net.layer_activation(l, len(cache.zs))
    if net.layers is None:
        return jax.vmap(act.backward)(cache.zs[l - 1], cache.activations[l], g)
    k = [i for i, spec in enumerate(net.layers) if spec.has_weights][l - 1]
    return _per_neuron(act.backward, cache.zs[l - 1], cache.stages[k], g)


def input_error(net: Network, params: Params, cache: Cache, delta_1: Array) -> Array:
    """dC/dx from delta^1: eq 8 of the 001 notes through layer 1 (and, with
    ``net.layers``, routed through the layer types before it).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> cache = fbp.core.forward_pass(Network(), params, jnp.ones((5, 3)))
      >>> fbp.core.input_error(Network(), params, cache, jnp.ones((5, 4))).shape
      (5, 3)
    """
    if net.layers is None:
        return Dense.transport(params[0].w, delta_1)
    check_drawn(net, cache)
    first = next(k for k, spec in enumerate(net.layers) if spec.has_weights)
    g = net.layers[first].transport(params[0].w, delta_1, cache.activations[0])
    for k in range(first - 1, -1, -1):
        g = _error_below(net.layers[k], cache, k, 0, None, g, None)
    return g


def output_errors(
    net: Network,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    scale: Optional[Array] = None,
    key: Optional[Array] = None,
) -> tuple[Cache, Array, Array]:
    r"""The forward pass of a batch and delta^L of every example (eqs 90-91, vmapped):
    ``(cache, ys in the params' dtype, delta^L)``.

    \[ \delta^L = \nabla_a C \odot \sigma'(z^L) \]

    ``scale``, when given, multiplies delta^L; eq 96 is linear in delta, so every
    delta^l carries it (the mean gradient's 1/batch goes into the smallest array).
    ``key`` draws the `Dropout` masks of a network with ``layers``.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> cache, ys, delta_L = fbp.core.output_errors(Network(), params, xs, ys)
      >>> delta_L.shape
      (5, 2)
    """
    cache = forward_pass(net, params, xs, key=key)
    ys = targets(ys, cache.activations[-1])
    one = functools.partial(output_error, net=net)
    delta_L = jax.vmap(one)(cache.zs[-1], cache.activations[-1], ys)
    if scale is not None:
        delta_L = delta_L * scale
    return cache, ys, delta_L


def backprop_batch(
    net: Network,
    params: Params,
    xs: Array,
    ys: Array,
    *,
    scale: Optional[Array] = None,
    key: Optional[Array] = None,
) -> Record:
    """The core: forward pass, eqs 90-91 per example (`output_errors`), eq 96 back to
    layer 1 (`backward_pass`). ``key`` draws the `Dropout` masks, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> [delta.shape for delta in record.deltas]
      [(5, 4), (5, 2)]
    """
    cache, ys, delta_L = output_errors(net, params, xs, ys, scale=scale, key=key)
    return Record(cache, ys, backward_pass(net, params, cache, delta_L))


def layer_terms(net: Network, deltas: list[Array], cache: Cache) -> list[tuple]:
    """``(layer type, delta^l, a^{l-1})`` of every layer with weights: what eq 99 (or a
    quantity built like it) takes, with the type whose gradient to use. ``deltas`` may
    also be columns backpropagated in place of delta^L.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> record = fbp.core.backprop_batch(Network(), params, jnp.ones((5, 3)), jnp.zeros((5, 2)))
      >>> [(kind.__name__, d.shape, a.shape) for kind, d, a in
      ...  fbp.core.layer_terms(Network(), record.deltas, record.cache)]
      [('Dense', (5, 4), (5, 3)), ('Dense', (5, 2), (5, 4))]
    """
    return list(zip(layer_types(net, len(deltas)), deltas, cache.activations))


def summed_gradients(deltas: list[Array], cache: Cache, *, net: Network = Network()) -> list[Layer]:
    r"""Eq 99 and eq 7 for every layer, summed over the batch: sum_i delta_i^l (a_i^{l-1})^T.

    \[ \frac{\partial C}{\partial w^l} = \sum_i \delta^l_i (a^{l-1}_i)^T, \qquad
    \frac{\partial C}{\partial b^l} = \sum_i \delta^l_i \]

    With ``net.layers``, each layer type's gradient (a convolution's: the correlation
    of a^{l-1} with delta^l).

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> [g.w.shape for g in fbp.core.summed_gradients(record.deltas, record.cache)]
      [(4, 3), (2, 4)]
    """
    return [kind.gradient(d, a) for kind, d, a in layer_terms(net, deltas, cache)]


def per_example_gradients(
    deltas: list[Array], cache: Cache, *, net: Network = Network()
) -> list[Layer]:
    r"""Eq 99 and eq 7 for every layer and every example: each leaf gets a leading batch
    axis (w^l of shape (batch, n_l, n_{l-1}) for a dense layer, (batch, filters, C, kh,
    kw) for a convolution).

    \[ \frac{\partial C_i}{\partial w^l} = \delta^l_i (a^{l-1}_i)^T \]

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> record = fbp.core.backprop_batch(Network(), params, xs, ys)
      >>> [g.w.shape for g in fbp.core.per_example_gradients(record.deltas, record.cache)]
      [(5, 4, 3), (5, 2, 4)]
    """
    return [kind.per_example_gradient(d, a) for kind, d, a in layer_terms(net, deltas, cache)]


def mean_value_and_grad(
    net: Network, params: Params, xs: Array, ys: Array, *, key: Optional[Array] = None
) -> tuple[Array, list[Layer]]:
    """The mean cost and the mean gradient of a batch, with 1/batch folded into delta^L;
    ``key`` draws the `Dropout` masks, if any.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> value, g = fbp.core.mean_value_and_grad(Network(), params, xs, ys)
      >>> value.shape, bool(jnp.allclose(g[0].w, grad(params, xs, ys)[0].w))
      ((), True)
    """
    record = backprop_batch(net, params, xs, ys, scale=1.0 / xs.shape[0], key=key)
    value = jnp.mean(example_costs(net, record.cache, record.ys))
    return value, summed_gradients(record.deltas, record.cache, net=net)


def mean_cost(net: Network, params: Params, xs: Array, ys: Array) -> Array:
    """The mean cost of a batch, from the forward pass alone.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> bool(jnp.allclose(fbp.core.mean_cost(Network(), params, xs, ys), loss(params, xs, ys)))
      True
    """
    cache = forward_pass(net, params, xs)
    return jnp.mean(example_costs(net, cache, targets(ys, cache.activations[-1])))


class Gradient:
    """What a training step descends along: ``gradient(key, net, params, xs, ys)`` returns
    an update direction in the structure of ``params``.

    Subclasses are frozen dataclasses registered as pytrees: their hyperparameters are
    leaves (traced under `jax.jit`, one per run under `functional_bp.training.many`),
    their choices static fields. `MeanGradient` is backprop's; the families add
    clipped and private gradients (`functional_bp.per_example`), learning rules
    (`functional_bp.feedback`) and sharded ones (`functional_bp.parallel`).

    Examples:
      >>> isinstance(fbp.core.MeanGradient(), fbp.core.Gradient)
      True
    """

    def __call__(self, key, net: Network, params, xs: Array, ys: Array):
        raise NotImplementedError

    layered = False  # whether it takes convolution, pooling and dropout

    def check(self, net: Network, params, xs, ys) -> None:
        """Trace-time checks of what the step was given (shapes, structure)."""
        check(net, params, xs, ys, layered=self.layered)

    def check_values(self) -> None:
        """Checks of the hyperparameters' values, outside any trace."""


def gradient_class(cls):
    """Makes ``cls`` a frozen dataclass and a pytree: fields marked
    ``dataclasses.field(metadata={"static": True})`` are static, the rest are leaves.

    Examples:
      >>> @fbp.core.gradient_class
      ... class Scaled(fbp.core.Gradient):
      ...     scale: float = 1.0
      >>> jax.tree.leaves(Scaled(0.5))
      [0.5]
    """
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


@gradient_class
class MeanGradient(Gradient):
    """Backprop's mean gradient of the mini-batch (`functional_bp.grad`); the key draws
    the `Dropout` masks of a network that has them, and is ignored otherwise.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2])
      >>> xs, ys = jnp.ones((5, 3)), jnp.zeros((5, 2))
      >>> g = fbp.core.MeanGradient()(None, Network(), params, xs, ys)
      >>> [layer.w.shape for layer in g]
      [(4, 3), (2, 4)]
    """

    layered = True

    def __call__(self, key, net, params, xs, ys):
        return mean_value_and_grad(net, params, xs, ys, key=key)[1]
