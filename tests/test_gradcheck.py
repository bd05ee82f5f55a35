"""The gradient check (functional_bp.gradcheck): manual backprop against jax.grad and
central differences (chapter 10 eq 78). On every activation and cost:
tests/equivalence/test_vs_autodiff.py::test_finite_differences_agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_problem

import functional_bp as fbp
from functional_bp import gradcheck

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [4, 3, 2], dtype=jnp.float64)
XS = jnp.asarray(np.random.default_rng(0).random((6, 4)))
YS = jnp.asarray(np.eye(2)[[0, 1, 0, 1, 1, 0]])


def test_the_check_reports_every_leaf():
    result = fbp.check_gradients(PARAMS, XS, YS, fd_entries=4)
    assert result.ok
    assert [(row.layer, row.leaf, row.shape) for row in result.rows] == [
        (1, "w", (3, 4)),
        (1, "b", (3,)),
        (2, "w", (2, 3)),
        (2, "b", (2,)),
    ]
    assert [row.fd_entries for row in result.rows] == [4, 3, 4, 2]
    assert result.max_autodiff_rel <= 1e-10 and result.max_fd_rel <= 1e-6
    table = str(result)
    assert table.startswith("gradient check (float64, loss ")
    assert table.endswith("all ok") and table.count("  ok\n") == 4
    assert result.loss == pytest.approx(float(fbp.loss(PARAMS, XS, YS)), rel=1e-12)


def test_a_wrong_derivative_fails_the_check():
    """sigma' twice too large: the hand-written pass disagrees with jax.grad of sigma."""
    wrong = fbp.Activation(jnp.tanh, lambda z: 2 * (1 - jnp.tanh(z) ** 2), name="wrong")
    result = fbp.check_gradients(PARAMS, XS, YS, net=fbp.Network(wrong))
    assert not result.ok
    assert str(result).endswith("FAILED") and "FAIL" in str(result).splitlines()[3]


def test_tolerances_per_dtype():
    assert gradcheck.tolerances(np.float64) == (1e-10, 1e-6)
    assert gradcheck.tolerances(np.float32) == (1e-4, 1e-2)
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    assert gradcheck.tolerances(jnp.bfloat16) == (100 * eps, 10 * eps ** (1 / 3))


def test_float32_check_passes_at_its_tolerances():
    params, xs, ys = random_problem(3, dtype=np.float32, sizes=[5, 4, 3], batch=6)
    result = fbp.check_gradients(params, xs, ys, net=fbp.Network("tanh"))
    assert result.dtype == "float32" and result.rtol_autodiff == 1e-4
    assert result.ok, str(result)


def test_numpy_integers_are_ints():
    assert fbp.check_gradients(PARAMS, XS, YS, fd_entries=np.int64(2), seed=np.int64(1)).ok


BAD_CASES = [
    (
        "fd_entries 0",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_entries=0),
        ValueError,
        r"fd_entries to be an int >= 1",
    ),
    (
        "fd_entries 1.5",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_entries=1.5),
        TypeError,
        r"fd_entries",
    ),
    (
        "fd_step -1e-3",
        lambda: fbp.check_gradients(PARAMS, XS, YS, fd_step=-1e-3),
        ValueError,
        r"fd_step to be a finite number > 0",
    ),
    ("fd_step 0", lambda: fbp.check_gradients(PARAMS, XS, YS, fd_step=0.0), ValueError, r"fd_step"),
    ("seed -1", lambda: fbp.check_gradients(PARAMS, XS, YS, seed=-1), ValueError, r"seed"),
]


@pytest.mark.parametrize(
    "call,error,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
