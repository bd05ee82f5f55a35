"""`Network`: one frozen, hashable value for everything about a network that is static.

Every public function takes it as ``net=`` (keyword-only, default ``Network()``:
network.py's sigmoid neurons and quadratic cost) and jits with it as a static argument.
Names are resolved to `Activation` and `Cost` objects, and the cost is checked against
the output activation, once, when the value is built.

Layer types. Without ``layers`` every layer is dense and the params say the sizes. With
``layers=(...)`` (`functional_bp.layers`: `Dense`, `Conv2D`, `MaxPool2D`, `AvgPool2D`,
`Flatten`, `Dropout`) each layer type provides the three steps of the documents'
derivation: its forward map, its transport of the error (what replaces eq 96's
(w^{l+1})^T delta^{l+1}) and its parameter gradient (eq 99).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp._validation import check_label_range
from functional_bp.activations import Activation, get_activation
from functional_bp.costs import Cost, check_compatible, get_cost


class LayerSpec:
    """A layer type of ``Network(layers=...)`` (`functional_bp.layers` implements them):
    a hashable value with its options as fields, and what the network needs to know of
    it here: whether it has weights, whether it is dense, whether it draws at random.

    Examples:
      >>> fbp.layers.Dense(10).has_weights, fbp.layers.MaxPool2D(2).has_weights
      (True, False)
    """

    has_weights = False  # a Layer(w, b) in the params
    dense = False  # a vector of neurons from a vector: the output layer must be one
    random = False  # draws from a key (dropout)

    def out_shape(self, in_shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        """The per-example output shape for ``in_shape``; ValueError naming ``where``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """The layers, the activations and the cost of a network.

    Attributes:
      activation: sigma of the hidden layers 1..L-1: "sigmoid", "tanh", "relu",
        "identity", "softmax" or your own `Activation`.
      output_activation: sigma of the output layer L; None (the default) means
        ``activation``.
      cost: "quadratic" (1/2 ||a - y||^2, network.py), "squared_error" (sum_j (a_j -
        y_j)^2, the 001 notes), "cross_entropy" (network2.py), "log_likelihood" (-sum_j
        y_j ln a_j, network3.py) or your own `Cost`. Forward-only functions ignore it.
      layers: None (the default: every layer dense, sizes from the params) or a tuple of
        layer types from `functional_bp.layers`, ending with a `Dense`. ``activation``
        follows every `Dense` and `Conv2D` but the last, which takes
        ``output_activation``; pooling, `Flatten` and `Dropout` have no activation.
        Params come from `functional_bp.layers.init_network`.

    After construction the three fields hold `Activation` and `Cost` objects, so
    ``Network("sigmoid") == Network(SIGMOID)``. A cost defined only on (0, 1)
    (cross-entropy, log-likelihood) after an output activation that leaves it (tanh,
    relu, identity) is refused here, with the fix in the message.

    Examples:
      >>> net = Network(activation="relu", output_activation="softmax", cost="log_likelihood")
      >>> params, xs = init_mlp(jax.random.key(0), [3, 2]), jnp.ones((4, 3))
      >>> ys = jnp.eye(2)[jnp.array([0, 1, 0, 1])]  # one-hot targets
      >>> grad(params, xs, ys, net=net)[0].w.shape
      (2, 3)
      >>> Network("sigmoid") == Network()
      True
    """

    activation: str | Activation = "sigmoid"
    output_activation: Optional[str | Activation] = None
    cost: str | Cost = "quadratic"
    layers: Optional[tuple[LayerSpec, ...]] = None

    def __post_init__(self):
        hidden = get_activation(self.activation)
        output = (
            hidden
            if self.output_activation is None
            else get_activation(self.output_activation, "output_activation")
        )
        cost = get_cost(self.cost)
        check_compatible(cost, output.name)
        object.__setattr__(self, "activation", hidden)
        object.__setattr__(self, "output_activation", output)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "layers", _check_layers(self.layers))
        # Hashed on every jitted call, so once here.
        object.__setattr__(self, "_hash", hash((hidden, output, cost, self.layers)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Network):
            return NotImplemented
        return (self.activation, self.output_activation, self.cost, self.layers) == (
            other.activation,
            other.output_activation,
            other.cost,
            other.layers,
        )

    def __repr__(self) -> str:
        return (
            f"Network(activation={self.activation.name!r}, "
            f"output_activation={self.output_activation.name!r}, cost={self.cost.name!r}"
            + ("" if self.layers is None else f", layers={self.layers!r}")
            + ")"
        )

    @property
    def layered(self) -> bool:
        """Whether ``layers`` holds a layer type other than `Dense` (convolution, pooling,
        flattening, dropout): the functions that take only dense networks refuse it."""
        return self.layers is not None and any(not s.dense for s in self.layers)

    @property
    def has_dropout(self) -> bool:
        """Whether ``layers`` holds a `Dropout` (random only where a key is given)."""
        return self.layers is not None and any(s.random for s in self.layers)

    def deterministic(self) -> Network:
        """The same network without its layers that draw from a key (`Dropout`): what
        evaluation runs, with the same params. A gradient, a statistic or a curvature of
        a network with dropout needs a key for its masks; pass ``net=net.deterministic()``
        to differentiate the network with dropout off, on purpose.

        Examples:
          >>> net = Network(layers=(fbp.layers.Dropout(0.5), fbp.layers.Dense(2)))
          >>> net.deterministic().layers
          (Dense(n=2),)
        """
        if not self.has_dropout:
            return self
        kept = tuple(s for s in self.layers if not s.random)
        return dataclasses.replace(self, layers=kept)

    def layer_activation(self, l: int, num_layers: int) -> Activation:
        """sigma of layer l (1-based): the output activation for l = L.

        Examples:
          >>> net = Network(activation="relu", output_activation="softmax")
          >>> net.layer_activation(1, 2).name, net.layer_activation(2, 2).name
          ('relu', 'softmax')
        """
        return self.output_activation if l == num_layers else self.activation


def _check_layers(layers):
    if layers is None:
        return None
    if isinstance(layers, LayerSpec):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)):
        raise TypeError(
            f"Expected layers to be a tuple of layer types (functional_bp.layers), got "
            f"{type(layers).__name__} instead"
        )
    layers = tuple(layers)
    for k, spec in enumerate(layers, start=1):
        if not isinstance(spec, LayerSpec):
            raise TypeError(
                f"Expected layers[{k - 1}] to be a layer type (Dense, Conv2D, MaxPool2D, "
                f"AvgPool2D, Flatten, Dropout from functional_bp.layers), got "
                f"{type(spec).__name__} {spec!r} instead"
            )
    if not layers or not layers[-1].dense:
        last = repr(layers[-1]) if layers else "nothing"
        raise ValueError(
            f"Expected layers to end with a Dense layer (the output neurons a^L the cost "
            f"compares with y), got {last}"
        )
    return layers


_DEFAULT = object()


class DenseOnlyError(ValueError):
    """A function for dense layers given a network with another layer type; the message
    starts "This function", which the public function's wrapper replaces by its name."""


class KeyRequiredError(ValueError):
    """A backward pass through a layer that draws from a key (`Dropout`) given none:
    without its masks it would silently differentiate the network without dropout. The
    message starts "This function", as `DenseOnlyError`'s does."""


def jit_with_net(fn=None, *, static: tuple[str, ...] = (), half_in_float32: bool = False):
    """`jax.jit` for a public function that takes ``net=``, with ``net`` and ``static``
    as static arguments.

    ``half_in_float32``: params all in float16 (or all in bfloat16) are computed with in
    float32, with the arguments of theirs that share that dtype (``xs``, ``ys``, a rule's
    ``feedback``), and the float32 results are cast back: a half-precision forward pass
    overflows at 65,504 (float16), where a softmax of inf is NaN.

    Before JAX sees the call, and in microseconds, it refuses what JAX would report from
    deep inside: an option passed positionally (``grad(params, xs, ys, "relu")``), a
    ``net`` that is not a `Network`, a static option that cannot be hashed. The jitted
    function's ``lower``, ``trace`` and ``eval_shape`` stay reachable.

    Examples:
      >>> @fbp.network.jit_with_net
      ... def width(xs, *, net=Network()):
      ...     return xs.shape[-1]
      >>> width(jnp.ones((2, 3)), "relu")
      Traceback (most recent call last):
      TypeError: width takes 1 positional argument (xs), got 2: pass the others by keyword ...
    """
    if fn is None:
        return functools.partial(jit_with_net, static=static, half_in_float32=half_in_float32)
    parameters = inspect.signature(fn).parameters.values()
    static_names = tuple(p.name for p in parameters if p.name in ("net", *static))
    traced = upcast_half(fn) if half_in_float32 else fn
    jitted = jax.jit(traced, static_argnames=static_names)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in parameters if p.kind in kinds]
    keywords = ", ".join(f"{p.name}=" for p in parameters if p.kind == p.KEYWORD_ONLY)
    variadic = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)
    static_positions = [(i, name) for i, name in enumerate(positional) if name in static]
    static_keywords = [name for name in static if name not in positional]
    # Where integer class labels may come: their range needs concrete values, outside jit.
    label_position = next(
        ((positional.index(name), name) for name in ("ys", "y") if name in positional), None
    )
    params_position = positional.index("params") if "params" in positional else None
    if params_position is None:
        label_position = None

    def check_call(args: tuple, kwargs: dict) -> None:
        if len(args) > len(positional) and not variadic:
            count = len(positional)
            raise TypeError(
                f"{fn.__name__} takes {count} positional argument{'s' * (count != 1)} "
                f"({', '.join(positional)}), got {len(args)}: pass the others by keyword "
                f"({keywords}); the extra one is {_shown(args[count])}"
            )
        net = kwargs.get("net", _DEFAULT)
        if net is not _DEFAULT:
            check_network(net)
        for name in static_keywords:
            if name in kwargs:
                _check_hashable(kwargs[name], name, fn.__name__)
        for i, name in static_positions:
            value = args[i] if i < len(args) else kwargs.get(name)
            _check_hashable(value, name, fn.__name__)
        if params_position is not None:
            params = args[params_position] if params_position < len(args) else kwargs.get("params")
            _check_params_leaves(params, fn.__name__)
        if label_position is not None:
            _check_label_values(args, kwargs, label_position, params_position, net)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        check_call(args, kwargs)
        try:
            return jitted(*args, **kwargs)
        except (DenseOnlyError, KeyRequiredError) as error:  # raised at trace time
            text = str(error).replace("This function", fn.__name__, 1)
            raise type(error)(text) from None

    for attribute in ("lower", "trace", "eval_shape", "_cache_size", "clear_cache"):
        setattr(call, attribute, getattr(jitted, attribute))
    call.check_call = check_call  # `_validation.check_values` runs it first
    return call


_HALF = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))
_UPCAST = ("params", "xs", "ys", "x", "y", "feedback")  # the arguments cast with params


def _half_dtype(params) -> Optional[np.dtype]:
    """float16 or bfloat16 when every leaf of ``params`` has it, else None (mixed dtypes
    are left for the checks to refuse)."""
    dtypes = {np.dtype(getattr(leaf, "dtype", np.float64)) for leaf in jax.tree.leaves(params)}
    return dtypes.pop() if len(dtypes) == 1 and dtypes <= set(_HALF) else None


def upcast_half(fn):
    """``fn`` computing in float32 on half-precision params (`jit_with_net`)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        dtype = _half_dtype(bound.arguments.get("params"))
        if dtype is None:
            return fn(*args, **kwargs)

        def up(leaf):
            same = getattr(leaf, "dtype", None) == dtype
            return jnp.asarray(leaf, jnp.float32) if same else leaf

        for name in _UPCAST:
            if name in bound.arguments:
                bound.arguments[name] = jax.tree.map(up, bound.arguments[name])
        out = fn(*bound.args, **bound.kwargs)

        def down(leaf):
            same = getattr(leaf, "dtype", None) == jnp.float32
            return leaf.astype(dtype) if same else leaf

        return jax.tree.map(down, out)

    return run


def _check_params_leaves(params, function: str) -> None:
    """Every leaf of ``params`` an array or a number, before jit sees it: a model of
    another library (an equinox module holds its activation function as a leaf) gets
    this message instead of JAX's about an invalid argument."""
    if isinstance(params, (list, tuple)) and all(
        isinstance(layer, tuple) and all(map(_is_array_like, layer)) for layer in params
    ):
        return  # a list of Layer: the common case, without a tree walk
    if all(map(_is_array_like, jax.tree.leaves(params))):  # the path only on failure
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not _is_array_like(leaf):
            where = "params" + jax.tree_util.keystr(path)
            raise TypeError(
                f"Expected params of {function} to be a list of Layer(w, b) (init_mlp, "
                f"layers.init_network) or a learning rule's FeedbackParams, got "
                f"{type(params).__name__}, whose leaf {where} is {type(leaf).__name__}, not "
                f"an array; convert a model of another library to a list of Layer(w, b) "
                f"first"
            )


_ARRAY_TYPES: set[type] = set()  # types seen to be arrays: one set lookup per leaf


def _is_array_like(leaf) -> bool:
    kind = type(leaf)
    if kind in _ARRAY_TYPES:
        return True
    found = hasattr(leaf, "dtype") or isinstance(leaf, (int, float, complex, np.number))
    if found:
        _ARRAY_TYPES.add(kind)
    return found


def _check_label_values(
    args: tuple, kwargs: dict, position: tuple[int, str], params_position: int, net
) -> None:
    index, name = position
    labels = args[index] if index < len(args) else kwargs.get(name)
    params = args[params_position] if params_position < len(args) else kwargs.get("params")
    dtype = getattr(labels, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        return  # one-hot or real targets, or not an array (the trace-time checks say so)
    if isinstance(net, Network) and net.layers is not None:
        n_out = net.layers[-1].n  # the output layer's own count, whatever the params hold
    else:
        try:
            n_out = np.shape(params[-1][0])[0]
        except (TypeError, IndexError, KeyError):
            return  # not a list of Layer: the trace-time checks say so
    check_label_range(labels, n_out, name)


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_hashable(value, name: str, function: str) -> None:
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"Expected {name} to be hashable (a static option of {function}), got "
            f"{_shown(value)} instead"
        ) from None


def check_network(net) -> Network:
    """Raises TypeError unless ``net`` is a `Network` (names go through `Network(...)`).

    Examples:
      >>> fbp.network.check_network(Network()) == Network()
      True
      >>> fbp.network.check_network("sigmoid")
      Traceback (most recent call last):
      TypeError: Expected net to be a functional_bp.Network, got str 'sigmoid' instead; ...
    """
    if not isinstance(net, Network):
        raise TypeError(
            f"Expected net to be a functional_bp.Network, got {type(net).__name__} {net!r} "
            'instead; build one with Network(activation="sigmoid", cost="quadratic")'
        )
    return net


def _check_returns(what: str, fn, args: tuple, expected: tuple) -> None:
    """Traces ``fn(*args)`` abstractly; raises ValueError unless it returns ``expected``."""
    shapes = ", ".join(str(tuple(arg.shape)) for arg in args)
    try:
        got = tuple(jax.eval_shape(fn, *args).shape)
    except Exception as error:  # the user's function, traced on one example
        raise ValueError(f"{what} failed on one example (shapes {shapes}): {error}") from error
    if got != expected:
        raise ValueError(
            f"{what} returned shape {got} for one example (shapes {shapes}); expected {expected}"
        )


@functools.lru_cache(maxsize=1024)  # the same network and shapes are checked once
def check_contracts(net: Network, sizes: tuple[int, ...], dtype: np.dtype, with_cost: bool) -> None:
    """Checks with `jax.eval_shape` that every `Activation` and `Cost` keeps its contract
    on one example: sigma, sigma' and the VJP return z's shape (n,); C returns a scalar
    and dC/da (or a closed-form delta^L) a's shape (n_out,).

    Examples:
      >>> fbp.network.check_contracts(Network(), (3, 4, 2), np.dtype("float32"), True) is None
      True
    """
    num_layers = len(sizes) - 1
    seen = set()
    for l, n in enumerate(sizes[1:], start=1):
        act = net.layer_activation(l, num_layers)
        if (act, n) in seen:  # one check per activation and width
            continue
        seen.add((act, n))
        where = f"Activation {act.name!r} of layer {l}"
        z = jax.ShapeDtypeStruct((n,), dtype)
        _check_returns(f"{where}: fn", act.fn, (z,), (n,))
        if act.vjp is not None:
            _check_returns(f"{where}: vjp(z, a, g)", act.vjp, (z, z, z), (n,))
        else:
            _check_returns(f"{where}: derivative", act.derivative, (z,), (n,))
    if not with_cost:
        return
    n_out = sizes[-1]
    a = jax.ShapeDtypeStruct((n_out,), dtype)
    form = net.cost.closed_form(net.output_activation)
    where = f"Cost {net.cost.name!r}" + (" (closed form in z)" if form else "")
    fn, delta, delta_args = (
        (net.cost.fn, net.cost.derivative, (a, a))
        if form is None
        else (form.fn, form.delta, (a, a, a))
    )
    _check_returns(f"{where}: fn", fn, (a, a), ())
    _check_returns(
        f"{where}: " + ("derivative" if form is None else "delta"), delta, delta_args, (n_out,)
    )
    sample = net.cost.sample if form is None else form.sample
    if sample is not None:  # a target like y: (n_out,), real floating (diag_ggn_mc)
        draw = functools.partial(_sample_one, sample)
        _check_returns(
            f"{where}: sample(key, {'a' if form is None else 'z'})", draw, (a,), (n_out,)
        )
        got = jax.eval_shape(draw, a).dtype
        if not jnp.issubdtype(got, jnp.floating):
            raise TypeError(
                f"{where}: sample(key, ...) returned {got} for one example; expected a real "
                f"floating dtype (targets like y)"
            )


def _sample_one(sample, a):
    return sample(jax.random.key(0), a)
