r"""Layer types beyond the dense layer: convolution, pooling, flattening and dropout, each
with the three steps the documents derive for a dense layer (chapter 10 eqs 88-99, the
001 notes eqs 1-8), carried to the layer type as the book these documents follow does in
its chapter 6.

A layer type with weights (`Dense`, `Conv2D`) provides

- ``forward(layer, a_prev)``: z^l from a^{l-1} (eq 1 of the 001 notes);
- ``transport(weights, delta, a_prev)``: dC/da^{l-1} from delta^l, what replaces eq 96's
  (w^l)^T delta^l (001 notes eq 8); delta^{l-1} is this ⊙ sigma'(z^{l-1});
- ``gradient(delta, a_prev)``: dC/dw^l and dC/db^l (eq 99 and eq 7), summed over the
  batch, and ``per_example_gradient``, the same for every example.

A layer type without weights (`MaxPool2D`, `AvgPool2D`, `Flatten`, `Dropout`) maps a^{l-1}
to its output (``apply``) and routes dC/d(output) back to dC/da^{l-1} (``route``).

Every array here has a leading batch axis; images are channels first, (batch, C, H, W).
Build a network with ``Network(layers=(...))`` and its params with `init_network`; the
params are a list of `Layer(w, b)`, one per layer with weights, in order (a convolution's
w has shape (filters, C, kh, kw)). The hidden activation follows every layer with weights
but the last, which takes the output activation; pooling follows the activation.

Examples:
  >>> from functional_bp.layers import Conv2D, MaxPool2D, Flatten, Dense, init_network
  >>> net = Network(layers=(Conv2D(4, 3), MaxPool2D(2), Flatten(), Dense(10)))
  >>> params = init_network(jax.random.key(0), net, (1, 8, 8))
  >>> [layer.w.shape for layer in params]
  [(4, 1, 3, 3), (10, 36)]
  >>> grad(params, jnp.ones((2, 1, 8, 8)), jnp.array([3, 7]), net=net)[0].w.shape
  (4, 1, 3, 3)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from functional_bp._validation import check_int, check_key, check_shared_dtype
from functional_bp.equations import layer_gradient, weighted_error
from functional_bp.network import LayerSpec
from functional_bp.params import Layer, Params, check_init, init_layer

Array = jax.Array

__all__ = [
    "AvgPool2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "LayerSpec",
    "MaxPool2D",
    "describe",
    "init_network",
    "layer_types",
    "shapes",
]

_IMAGE = ("NCHW", "OIHW", "NCHW")  # batch, channels, height, width; filters first


def _spec(cls):
    return dataclasses.dataclass(frozen=True)(cls)


@_spec
class Dense(LayerSpec):
    r"""The fully connected layer of ``n`` neurons: z = w a + b (eq 1 of the 001 notes),
    transport (w^{l+1})^T delta^{l+1} (`weighted_error`, eq 8), gradient delta (a^{l-1})^T
    (`layer_gradient`, eq 99).

    \[ z^l = w^l a^{l-1} + b^l, \qquad \nabla_{a^l} C = (w^{l+1})^T \delta^{l+1},
    \qquad \frac{\partial C}{\partial w^l} = \delta^l (a^{l-1})^T \]

    The steps are static methods, so ``Dense.forward(layer, a)`` works on the class: a
    dense-only network (``Network()`` without ``layers``) uses them so.

    Examples:
      >>> layer = Layer(jnp.ones((2, 3)), jnp.zeros(2))
      >>> fbp.layers.Dense.forward(layer, jnp.ones(3)).shape
      (2,)
      >>> fbp.layers.Dense.gradient(jnp.ones(2), jnp.ones(3)).w.shape
      (2, 3)
    """

    n: int
    has_weights = True
    dense = True

    def __post_init__(self):
        check_int(self.n, "Dense(n)")

    def out_shape(self, in_shape, where):
        if len(in_shape) != 1:
            raise ValueError(
                f"{where} takes a vector per example, got shape {in_shape}: put Flatten() before it"
            )
        return (self.n,)

    def weight_shape(self, in_shape) -> tuple[int, ...]:
        return (self.n, in_shape[0])

    @staticmethod
    def forward(layer: Layer, a_prev: Array) -> Array:
        z = a_prev @ layer.w.T  # z_j = sum_k w_jk a_k + b_j, for every row of a batch
        return z + layer.b.reshape((1,) * (z.ndim - 1) + (-1,))

    @staticmethod
    def transport(weights: Array, delta_next: Array, a_prev: Optional[Array] = None) -> Array:
        return weighted_error(weights, delta_next)

    gradient = staticmethod(layer_gradient)

    @staticmethod
    def per_example_gradient(delta: Array, a_prev: Array) -> Layer:
        """Eq 99 and eq 7 for every example: w of shape (batch, n_out, n_in)."""
        return Layer(delta[:, :, None] * a_prev[:, None, :], delta)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"Expected {name} to be an int or a pair (height, width), got {value!r}"
            )
        return tuple(check_int(v, name) for v in value)
    size = check_int(value, name)
    return (size, size)


@_spec
class Conv2D(LayerSpec):
    r"""A convolutional layer: ``filters`` kernels of ``kernel`` (int or (kh, kw)) over
    every channel, moved by ``stride``, with ``padding`` "valid" (none), "same" (the
    output of input size / stride) or an int (zeros on every side).

    The three steps, with * the cross-correlation (what `jax.lax.conv_general_dilated`
    computes; no kernel flip), channels first:

    \[ z^l = w^l * a^{l-1} + b^l, \qquad
    \nabla_{a^{l-1}} C = \delta^l \mathbin{\tilde *} w^l, \qquad
    \frac{\partial C}{\partial w^l} = a^{l-1} * \delta^l, \qquad
    \frac{\partial C}{\partial b^l} = \sum_{x, y} \delta^l_{:, x, y}. \]

    - forward (eq 1 carried over): z_{o,y,x} = sum_{c,i,j} w_{o,c,i,j} a_{c, sy+i, sx+j}
      + b_o;
    - transport (eq 8 carried over, \(\tilde *\) the transposed convolution): each input
      position collects delta_{o,y,x} w_{o,c,i,j} from every output it fed, dC/da_{c,p,q}
      = sum_{o,y,x: sy+i=p, sx+j=q} w_{o,c,i,j} delta_{o,y,x};
    - gradient (eq 99 carried over): dC/dw_{o,c,i,j} = sum_{y,x} delta_{o,y,x}
      a_{c,sy+i,sx+j}, the correlation of a^{l-1} with delta^l; dC/db_o = sum_{y,x}
      delta_{o,y,x} (eq 7).

    Examples:
      >>> conv = fbp.layers.Conv2D(8, 3, stride=2, padding="same")
      >>> conv.out_shape((1, 28, 28), "layer 1")
      (8, 14, 14)
    """

    filters: int
    kernel: Union[int, tuple[int, int]]
    stride: Union[int, tuple[int, int]] = 1
    padding: Union[str, int] = "valid"
    has_weights = True

    def __post_init__(self):
        check_int(self.filters, "Conv2D(filters)")
        object.__setattr__(self, "kernel", _pair(self.kernel, "Conv2D(kernel)"))
        object.__setattr__(self, "stride", _pair(self.stride, "Conv2D(stride)"))
        padding = self.padding
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same"):
                raise ValueError(
                    f'Expected Conv2D(padding) to be "valid", "same" or an int, got {padding!r}'
                )
            object.__setattr__(self, "padding", padding.lower())
        else:
            check_int(padding, "Conv2D(padding)", minimum=0)

    def _pads(self, spatial: tuple[int, int]) -> list[tuple[int, int]]:
        if self.padding == "valid":
            return [(0, 0), (0, 0)]
        if self.padding == "same":
            return lax.padtype_to_pads(spatial, self.kernel, self.stride, "SAME")
        return [(self.padding, self.padding)] * 2

    def out_shape(self, in_shape, where):
        if len(in_shape) != 3:
            raise ValueError(
                f"{where} takes images (channels, height, width) per example, got shape {in_shape}"
            )
        spatial = in_shape[1:]
        out = []
        for size, k, s, (lo, hi) in zip(spatial, self.kernel, self.stride, self._pads(spatial)):
            padded = size + lo + hi
            if k > padded:
                raise ValueError(
                    f"{where}: kernel {self.kernel} is larger than its input {spatial} "
                    f"(padded to {padded} on that side)"
                )
            out.append((padded - k) // s + 1)
        return (self.filters, *out)

    def weight_shape(self, in_shape) -> tuple[int, ...]:
        return (self.filters, in_shape[0], *self.kernel)

    def forward(self, layer: Layer, a_prev: Array) -> Array:
        z = lax.conv_general_dilated(
            a_prev, layer.w, self.stride, self._pads(a_prev.shape[2:]), dimension_numbers=_IMAGE
        )
        return z + layer.b[None, :, None, None]

    def _spatial(self, a_prev: Array, delta: Array):
        """Per spatial axis: input size, kernel, stride, padding before, output size."""
        pads = self._pads(a_prev.shape[2:])
        return [
            (size, k, s, lo, out)
            for size, k, s, (lo, _), out in zip(
                a_prev.shape[2:], self.kernel, self.stride, pads, delta.shape[2:]
            )
        ]

    def transport(self, weights: Array, delta: Array, a_prev: Array) -> Array:
        """dC/da^{l-1}: delta dilated by the stride and correlated with the kernel flipped
        and its in/out channels swapped (the transposed convolution)."""
        # Full correlation of the dilated delta, cut to the input's extent.
        pads = [
            (k - 1 - lo, size + lo - (out - 1) * s - 1)
            for size, k, s, lo, out in self._spatial(a_prev, delta)
        ]
        flipped = jnp.flip(weights, (2, 3))
        return lax.conv_general_dilated(
            delta,
            flipped,
            (1, 1),
            pads,
            lhs_dilation=self.stride,
            dimension_numbers=("NCHW", "IOHW", "NCHW"),
        )

    def gradient(self, delta: Array, a_prev: Array) -> Layer:
        """dC/dw summed over the batch: the correlation of a^{l-1} with delta^l, one
        convolution with the batch as the contracted channel axis."""
        pads = [
            (lo, k + (out - 1) * s - size - lo)
            for size, k, s, lo, out in self._spatial(a_prev, delta)
        ]
        w = lax.conv_general_dilated(
            a_prev,
            delta,
            (1, 1),
            pads,
            rhs_dilation=self.stride,
            dimension_numbers=("CNHW", "IOHW", "CNHW"),
        )
        return Layer(w, jnp.sum(delta, axis=(0, 2, 3)))

    def patches(self, a_prev: Array) -> Array:
        """Every receptive field of a^{l-1}: (batch, C, kh, kw, out_h, out_w), by strided
        slices of the padded input (data movement only; `jax.lax`'s patches primitive
        is a convolution with a one-hot kernel, C kh kw times the multiply-adds)."""
        (lo_h, hi_h), (lo_w, hi_w) = self._pads(a_prev.shape[2:])
        a = jnp.pad(a_prev, ((0, 0), (0, 0), (lo_h, hi_h), (lo_w, hi_w)))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        out_h = (a.shape[2] - kh) // sh + 1
        out_w = (a.shape[3] - kw) // sw + 1
        rows = [
            jnp.stack(
                [
                    a[:, :, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
                    for j in range(kw)
                ],
                axis=2,
            )
            for i in range(kh)
        ]
        return jnp.stack(rows, axis=2)

    def per_example_gradient(self, delta: Array, a_prev: Array) -> Layer:
        """Eq 99 carried over for every example: delta_i^l (batch, filters, out_h, out_w)
        against the receptive fields of a_i^{l-1}, one batched matrix product over the
        positions; w of shape (batch, filters, C, kh, kw)."""
        w = jnp.einsum("nopq,nckdpq->nockd", delta, self.patches(a_prev))
        return Layer(w, jnp.sum(delta, axis=(2, 3)))


def _windows(a: Array, size: int) -> Array:
    """(batch, C, H, W) as (batch, C, H/size, W/size, size * size)."""
    n, c, h, w = a.shape
    a = a.reshape(n, c, h // size, size, w // size, size)
    return a.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // size, w // size, size * size)


def _unwindows(windows: Array, size: int) -> Array:
    n, c, hs, ws, _ = windows.shape
    a = windows.reshape(n, c, hs, ws, size, size).transpose(0, 1, 2, 4, 3, 5)
    return a.reshape(n, c, hs * size, ws * size)


class _Pool(LayerSpec):
    size: int

    def __post_init__(self):
        check_int(self.size, f"{type(self).__name__}(size)")

    def out_shape(self, in_shape, where):
        if len(in_shape) != 3:
            raise ValueError(
                f"{where} takes images (channels, height, width) per example, got shape {in_shape}"
            )
        c, h, w = in_shape
        if h % self.size or w % self.size:
            raise ValueError(
                f"{where}: pooling size {self.size} does not divide its input's height and "
                f"width {(h, w)}"
            )
        return (c, h // self.size, w // self.size)


@_spec
class MaxPool2D(_Pool):
    """Max-pooling over ``size`` x ``size`` windows that do not overlap.

    Forward: each output is the largest of its window. Backward: the error goes to the
    position of that maximum (the first, where several are equal) and the others get 0:
    dC/da_p = dC/dout if p is the window's argmax, else 0. After an increasing activation
    (sigmoid, tanh, ReLU) pooling the activations equals the book's pooling of z before
    sigma.

    Examples:
      >>> pool = fbp.layers.MaxPool2D(2)
      >>> pool.apply(jnp.arange(16, dtype=jnp.float32).reshape(1, 1, 4, 4))[0, 0]
      Array([[ 5.,  7.],
             [13., 15.]], dtype=float32)
    """

    size: int = 2

    def apply(self, a: Array) -> Array:
        return jnp.max(_windows(a, self.size), axis=-1)

    def route(self, g: Array, a_in: Array) -> Array:
        windows = _windows(a_in, self.size)
        at_max = jax.nn.one_hot(jnp.argmax(windows, axis=-1), windows.shape[-1], dtype=g.dtype)
        return _unwindows(at_max * g[..., None], self.size)


@_spec
class AvgPool2D(_Pool):
    """Average-pooling over ``size`` x ``size`` windows that do not overlap: forward the
    window's mean; backward, each position of the window gets dC/dout / size^2.

    Examples:
      >>> fbp.layers.AvgPool2D(2).apply(jnp.ones((1, 1, 4, 4))).shape
      (1, 1, 2, 2)
    """

    size: int = 2

    def apply(self, a: Array) -> Array:
        return jnp.mean(_windows(a, self.size), axis=-1)

    def route(self, g: Array, a_in: Array) -> Array:
        spread = jnp.broadcast_to(g[..., None] / self.size**2, (*g.shape, self.size**2))
        return _unwindows(spread, self.size)


@_spec
class Flatten(LayerSpec):
    """(C, H, W) per example to a vector of C H W entries (row-major), for a `Dense` after
    images; backward, the error takes the input's shape again.

    Examples:
      >>> fbp.layers.Flatten().out_shape((2, 3, 4), "layer 2")
      (24,)
    """

    def out_shape(self, in_shape, where):
        return (math.prod(in_shape),)

    def apply(self, a: Array) -> Array:
        return a.reshape(a.shape[0], math.prod(a.shape[1:]))

    def route(self, g: Array, a_in: Array) -> Array:
        return g.reshape(a_in.shape)


@_spec
class Dropout(LayerSpec):
    """Dropout: each entry of its input is kept with probability 1 - ``rate`` and scaled
    by 1 / (1 - rate), or set to 0; the same mask multiplies delta on the way back.

    With a key (`functional_bp.grad(..., key=k)`, a training step) every example gets its
    own mask; without one (evaluation, and every function that takes no key) it is the
    identity. The scaling in training keeps the expected input of the next layer, where
    network3.py instead scales the next layer's weights by 1 - rate at evaluation: the
    same network in expectation.

    Examples:
      >>> drop = fbp.layers.Dropout(0.5)
      >>> mask = drop.mask(jax.random.key(0), (1000,), jnp.float32)
      >>> sorted(set(mask.tolist()))
      [0.0, 2.0]
    """

    rate: float = 0.5
    random = True

    def __post_init__(self):
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
            raise TypeError(f"Expected Dropout(rate) to be a number, got {type(rate).__name__}")
        if not 0 <= rate < 1:
            raise ValueError(f"Expected Dropout(rate) to be in [0, 1), got {rate} instead")
        object.__setattr__(self, "rate", float(rate))

    def out_shape(self, in_shape, where):
        return tuple(in_shape)

    def mask(self, key: Array, shape: tuple[int, ...], dtype) -> Array:
        keep = jax.random.bernoulli(key, 1 - self.rate, shape)
        return keep.astype(dtype) / jnp.asarray(1 - self.rate, dtype)


def layer_types(net, num_layers: int) -> tuple:
    """The layer type of each layer with weights (params[l - 1] is layer l): `Dense` for
    every layer of a dense-only network.

    Examples:
      >>> fbp.layers.layer_types(Network(), 2)
      (<class 'functional_bp.layers.Dense'>, <class 'functional_bp.layers.Dense'>)
    """
    if net.layers is None:
        return (Dense,) * num_layers
    return tuple(spec for spec in net.layers if spec.has_weights)


def is_dense(kind) -> bool:
    """Whether a layer type (the class or an instance) is `Dense`."""
    return kind is Dense or isinstance(kind, Dense)


def describe(spec: LayerSpec) -> str:
    """``Conv2D(20, kernel=(5, 5))``-style text for error messages and reports."""
    fields = [f"{f.name}={getattr(spec, f.name)!r}" for f in dataclasses.fields(spec)]
    return f"{type(spec).__name__}({', '.join(fields)})"


def shapes(net, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Every layer's per-example output shape, the input's first, for a network with
    ``layers``; a ValueError names the first layer that cannot take its input (a kernel
    larger than its input, a pooling size that does not divide it, a `Dense` after
    images without `Flatten`).

    Examples:
      >>> net = Network(layers=(fbp.layers.Conv2D(20, 5), fbp.layers.MaxPool2D(2),
      ...                       fbp.layers.Flatten(), fbp.layers.Dense(10)))
      >>> fbp.layers.shapes(net, (1, 28, 28))
      [(1, 28, 28), (20, 24, 24), (20, 12, 12), (2880,), (10,)]
    """
    out = [tuple(int(n) for n in input_shape)]
    for k, spec in enumerate(net.layers, start=1):
        out.append(spec.out_shape(out[-1], f"layer {k} ({describe(spec)})"))
    return out


def weight_shapes(net, input_shape: Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(w shape, b shape) of every layer with weights, in order."""
    every = shapes(net, input_shape)
    return [
        (spec.weight_shape(every[k]), (spec.weight_shape(every[k])[0],))
        for k, spec in enumerate(net.layers)
        if spec.has_weights
    ]


def init_network(
    key: Array,
    net,
    input_shape: Sequence[int],
    *,
    init: str = "scaled_normal",
    dtype=jnp.float32,
) -> list[Layer]:
    """Random params for ``net`` (a `Network` with ``layers``) given one example's shape.

    Args:
      key: a `jax.random` key.
      net: the `Network`; its ``layers`` say which layers have weights.
      input_shape: one example's shape, (C, H, W) for images or (n_in,).
      init: ``"scaled_normal"`` (network2.py and network3.py: weights N(0, 1/fan_in),
        fan_in = C kh kw for a convolution; biases N(0, 1)) or ``"normal"`` (N(0, 1)).
      dtype: a floating dtype.

    Returns:
      A list of `Layer(w, b)`, one per `Dense` or `Conv2D`.

    Examples:
      >>> net = Network(layers=(fbp.layers.Conv2D(20, 5), fbp.layers.MaxPool2D(2),
      ...                       fbp.layers.Flatten(), fbp.layers.Dense(10)))
      >>> [layer.w.shape for layer in init_network(jax.random.key(0), net, (1, 28, 28))]
      [(20, 1, 5, 5), (10, 2880)]
    """
    check_key(key)
    if getattr(net, "layers", None) is None:
        raise ValueError(
            "Expected a Network with layers=(...); for a dense-only network use "
            "init_mlp(key, sizes)"
        )
    check_init(init, dtype)
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    input_shape = tuple(check_int(n, f"input_shape[{i}]") for i, n in enumerate(input_shape))
    w_shapes = [w for w, _ in weight_shapes(net, input_shape)]
    keys = jax.random.split(key, len(w_shapes))
    return [init_layer(k, w_shape, init, dtype) for k, w_shape in zip(keys, w_shapes)]


def check_layered_params(net, params: Params, input_shape: tuple[int, ...]) -> None:
    """Trace-time: params has one `Layer` per layer with weights, of the shapes the
    layers make from ``input_shape``; errors name the layer."""
    expected = weight_shapes(net, input_shape)
    if not isinstance(params, (list, tuple)):
        raise TypeError(
            f"Expected params to be a list of Layer(w, b), got {type(params).__name__} instead"
        )
    if len(params) != len(expected):
        raise ValueError(
            f"Expected params to hold {len(expected)} Layer(w, b) (one per Dense or Conv2D "
            f"of net.layers), got {len(params)}"
        )
    specs = [(k, spec) for k, spec in enumerate(net.layers, start=1) if spec.has_weights]
    first_dtype = None
    for p, (layer, (w_shape, b_shape), (k, spec)) in enumerate(zip(params, expected, specs)):
        where = f"layer {k} ({describe(spec)}, params[{p}])"
        if not isinstance(layer, tuple) or len(layer) != 2:
            raise TypeError(f"Expected {where} to be a Layer(w, b), got {type(layer).__name__}")
        for name, leaf, shape in (("w", layer[0], w_shape), ("b", layer[1], b_shape)):
            if tuple(np.shape(leaf)) != shape:
                raise ValueError(
                    f"Expected {where} {name} to have shape {shape} for input of shape "
                    f"{tuple(input_shape)}, got {tuple(np.shape(leaf))} instead"
                )
        first_dtype = check_shared_dtype(
            ((f"{where} w", layer[0]), (f"{where} b", layer[1])), first_dtype
        )
