"""Bad input to the second-order products of functional_bp.curvature: the tangent v (structure,
shape, dtype,
by layer), the data (NaN, empty batch, shapes) and options passed positionally are
refused before any maths, with the exception type and a message naming what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp.curvature import diag_hessian, ggn_vector_product, hessian_vector_product

PARAMS = fbp.init_mlp(jax.random.key(0), [3, 4, 2], dtype=jnp.float64)
V = jax.tree.map(jnp.ones_like, PARAMS)
XS = jax.random.normal(jax.random.key(1), (5, 3), dtype=jnp.float64)
YS = jnp.zeros((5, 2), jnp.float64)
PRODUCTS = [
    pytest.param(ggn_vector_product, id="ggn"),
    pytest.param(hessian_vector_product, id="hvp"),
]


def _replace(v, l, field, value):
    v = list(v)
    v[l] = v[l]._replace(**{field: value})
    return v


BAD_TANGENTS = [
    pytest.param(V[:1], TypeError, "v to be a list of 2 Layer.*got 1 entries", id="too-few"),
    pytest.param(V + V[:1], TypeError, "got 3 entries", id="too-many"),
    pytest.param({"w": 1}, TypeError, "v to be a list of 2 Layer.*dict", id="dict"),
    pytest.param([V[0], jnp.ones(3)], TypeError, r"v layer 2 \(v\[1\]\) to be a Layer", id="array"),
    pytest.param(
        _replace(V, 0, "w", jnp.ones((3, 4))), ValueError, r"v layer 1.* w.*\(4, 3\)", id="w-t"
    ),
    pytest.param(_replace(V, 1, "b", jnp.ones(3)), ValueError, r"v layer 2.* b.*\(2,\)", id="b"),
    pytest.param(
        _replace(V, 1, "w", jnp.ones((2, 4), jnp.float32)),
        TypeError,
        "v layer 2.* w to have the params' dtype float64, got float32",
        id="float32",
    ),
    pytest.param(
        _replace(V, 0, "b", jnp.ones(4, jnp.int32)), TypeError, "v layer 1.* b.*int32", id="int"
    ),
    pytest.param(
        _replace(V, 0, "b", [1.0] * 4), TypeError, "v layer 1.* b to be an array", id="list"
    ),
]


@pytest.mark.parametrize("fn", PRODUCTS)
@pytest.mark.parametrize("v,error,match", BAD_TANGENTS)
def test_bad_tangent(fn, v, error, match):
    with pytest.raises(error, match=match):
        fn(PARAMS, v, XS, YS)


ALL = [
    pytest.param(lambda xs, ys: ggn_vector_product(PARAMS, V, xs, ys), id="ggn"),
    pytest.param(lambda xs, ys: hessian_vector_product(PARAMS, V, xs, ys), id="hvp"),
    pytest.param(lambda xs, ys: diag_hessian(PARAMS, xs, ys), id="diag"),
]

BAD_DATA = [
    pytest.param(XS.at[0, 0].set(jnp.nan), YS, ValueError, "xs to be finite", id="nan-xs"),
    pytest.param(XS, YS.at[1, 1].set(jnp.inf), ValueError, "ys to be finite", id="inf-ys"),
    pytest.param(XS[:0], YS[:0], ValueError, "at least one example", id="empty"),
    pytest.param(XS[:, :2], YS, ValueError, r"x to have shape \(batch, 3\)", id="xs-shape"),
    pytest.param(XS, YS[:4], ValueError, r"y to have shape \(5, 2\)", id="ys-shape"),
    pytest.param(XS, jnp.array([0, 1, 2, 0, 1]), ValueError, r"labels in \[0, 2\)", id="label"),
]


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("xs,ys,error,match", BAD_DATA)
def test_bad_data(fn, xs, ys, error, match):
    with pytest.raises(error, match=match):
        fn(xs, ys)


@pytest.mark.parametrize(
    "call,match",
    [
        pytest.param(
            lambda: ggn_vector_product(PARAMS, V, XS, YS, fbp.Network()),
            r"ggn_vector_product takes 4 positional arguments \(params, v, xs, ys\)",
            id="ggn",
        ),
        pytest.param(
            lambda: hessian_vector_product(PARAMS, V, XS, YS, "relu"),
            "hessian_vector_product takes 4 positional",
            id="hvp",
        ),
        pytest.param(
            lambda: diag_hessian(PARAMS, XS, YS, fbp.Network()),
            r"diag_hessian takes 3 positional arguments \(params, xs, ys\)",
            id="diag",
        ),
    ],
)
def test_options_positionally(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_net_that_is_not_a_network():
    with pytest.raises(TypeError, match="net"):
        diag_hessian(PARAMS, XS, YS, net="relu")


def test_bad_params_name_the_layer():
    params = [PARAMS[0], fbp.Layer(np.ones((2, 5)), np.ones(2))]
    with pytest.raises(ValueError, match="Layers don't chain: layer 2"):
        diag_hessian(params, XS, YS)
