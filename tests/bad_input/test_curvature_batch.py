"""Bad inputs of the per-example and sampled curvature (batch_diag_ggn, batch_diag_ggn_mc,
kfac_factors_mc) and of batch_dot's per_layer: each refused with its type and a message
naming the argument, before any computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp import curvature, statistics

PARAMS = fbp.init_mlp(jax.random.key(0), [3, 4, 2])
XS = jax.random.normal(jax.random.key(1), (6, 3))
YS = jax.nn.one_hot(jnp.array([0, 1, 1, 0, 1, 0]), 2)
KEY = jax.random.key(2)
NAN_XS = XS.at[0, 0].set(jnp.nan)
INF_YS = YS.at[1, 1].set(jnp.inf)

SAMPLED = [curvature.batch_diag_ggn_mc, curvature.kfac_factors_mc]
SAMPLED_IDS = ["batch_diag_ggn_mc", "kfac_factors_mc"]


@pytest.mark.parametrize("fn", SAMPLED, ids=SAMPLED_IDS)
@pytest.mark.parametrize(
    "samples,error",
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-1, ValueError, id="negative"),
        pytest.param(1.5, TypeError, id="float"),
        pytest.param(True, TypeError, id="bool"),
        pytest.param("2", TypeError, id="string"),
    ],
)
def test_samples(fn, samples, error):
    with pytest.raises(error, match="samples to be an int >= 1"):
        fn(KEY, PARAMS, XS, YS, samples=samples)


@pytest.mark.parametrize("fn", SAMPLED, ids=SAMPLED_IDS)
@pytest.mark.parametrize(
    "key",
    [
        pytest.param(0, id="int"),
        pytest.param(jnp.zeros(2), id="float-pair"),
        pytest.param(jax.random.split(KEY, 2), id="two-keys"),
    ],
)
def test_key(fn, key):
    with pytest.raises(TypeError, match="key to be a jax.random key"):
        fn(key, PARAMS, XS, YS)


ALL = [curvature.batch_diag_ggn, *SAMPLED]
ALL_IDS = ["batch_diag_ggn", *SAMPLED_IDS]


def call(fn, xs, ys, **kwargs):
    if fn is curvature.batch_diag_ggn:
        return fn(PARAMS, xs, ys, **kwargs)
    return fn(KEY, PARAMS, xs, ys, **kwargs)


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
@pytest.mark.parametrize(
    "xs,ys,error,match",
    [
        pytest.param(XS[:0], YS[:0], ValueError, "xs to hold at least one example", id="empty"),
        pytest.param(NAN_XS, YS, ValueError, "xs to be finite", id="nan-xs"),
        pytest.param(XS, INF_YS, ValueError, "ys to be finite", id="inf-ys"),
        pytest.param(XS[:, :2], YS, ValueError, "Expected x to have shape", id="xs-width"),
        pytest.param(XS, YS[:4], ValueError, "Expected y to have shape", id="ys-batch"),
        pytest.param(XS, jnp.array([0, 1, 2, 0, 1, 0]), ValueError, "ys", id="label-range"),
    ],
)
def test_data(fn, xs, ys, error, match):
    with pytest.raises(error, match=match):
        call(fn, xs, ys)


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
def test_options_positionally(fn):
    with pytest.raises(TypeError, match="pass the others by keyword"):
        if fn is curvature.batch_diag_ggn:
            fn(PARAMS, XS, YS, fbp.Network())
        else:
            fn(KEY, PARAMS, XS, YS, 2)


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
def test_net_not_a_network(fn):
    with pytest.raises(TypeError, match="net"):
        call(fn, XS, YS, net="softmax")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1, id="int"),
        pytest.param("yes", id="string"),
        pytest.param(None, id="none"),
    ],
)
def test_per_layer_not_a_bool(value):
    with pytest.raises(TypeError, match="per_layer to be a bool"):
        statistics.batch_dot(PARAMS, XS, YS, per_layer=value)


@pytest.mark.parametrize(
    "value", [pytest.param([True], id="list"), pytest.param(jnp.array(True), id="jax-array")]
)
def test_per_layer_unhashable(value):
    with pytest.raises(TypeError, match="per_layer to be hashable"):
        statistics.batch_dot(PARAMS, XS, YS, per_layer=value)


def test_per_layer_positionally():
    with pytest.raises(TypeError, match="pass the others by keyword"):
        statistics.batch_dot(PARAMS, XS, YS, True)


def test_per_layer_numpy_bool_is_accepted():
    grams = statistics.batch_dot(PARAMS, XS, YS, per_layer=np.bool_(True))
    assert grams.shape == (2, 6, 6)
