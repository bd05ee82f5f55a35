"""The params pytree and network.py's initialisations (functional_bp.params)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functional_bp as fbp
from functional_bp.params import init_mlp, layer_sizes


def test_init_mlp_checks_and_shapes(key):
    with pytest.raises(TypeError, match="floating"):
        init_mlp(key, [3, 2], dtype=jnp.int32)
    params = init_mlp(key, [784, 30, 10])
    assert [(l.w.shape, l.b.shape) for l in params] == [((30, 784), (30,)), ((10, 30), (10,))]
    assert params[0].w.dtype == jnp.float32
    assert layer_sizes(params) == [784, 30, 10]
    # N(0, 1) vs N(0, 1/n_in): the scaled weights have std near 1/sqrt(784).
    assert 0.9 < float(jnp.std(params[0].w)) < 1.1
    scaled = init_mlp(key, [784, 30, 10], init="scaled_normal", dtype=jnp.float64)
    assert scaled[0].w.dtype == jnp.float64
    assert 0.9 < float(jnp.std(scaled[0].w)) * np.sqrt(784) < 1.1
    assert 0.6 < float(jnp.std(scaled[0].b)) < 1.4


def test_init_mlp_takes_numpy_integers_and_either_kind_of_key():
    params = init_mlp(jax.random.key(0), np.array([4, 3, 2]))
    assert layer_sizes(params) == [4, 3, 2]
    raw = init_mlp(jax.random.PRNGKey(0), [4, 3, 2])
    assert layer_sizes(raw) == [4, 3, 2]
    assert isinstance(params[0], fbp.Layer) and params[0]._fields == ("w", "b")


KEY = jax.random.key(0)

BAD_CASES = [
    ("init key int", lambda: init_mlp(0, [3, 2]), TypeError, r"key to be a jax.random key"),
    ("init key None", lambda: init_mlp(None, [3, 2]), TypeError, r"key"),
    ("init one size", lambda: init_mlp(KEY, [784]), ValueError, r"at least two layer sizes"),
    ("init size 0", lambda: init_mlp(KEY, [3, 0, 2]), ValueError, r"sizes\[1\] .* got 0"),
    ("init size -1", lambda: init_mlp(KEY, [3, -1]), ValueError, r"sizes\[1\]"),
    ("init size float", lambda: init_mlp(KEY, [3, 2.5]), TypeError, r"sizes\[1\] to be an int"),
    ("init size str", lambda: init_mlp(KEY, ["3", 2]), TypeError, r"sizes\[0\]"),
    ("init size bool", lambda: init_mlp(KEY, [3, True]), TypeError, r"sizes\[1\]"),
    ("init unknown", lambda: init_mlp(KEY, [3, 2], init="xavier"), ValueError, r"init"),
    ("init int dtype", lambda: init_mlp(KEY, [3, 2], dtype=jnp.int32), TypeError, r"dtype"),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
