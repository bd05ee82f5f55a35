import gc
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# float64 for the tight comparisons; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
# Catches the classic (n,) vs (n, 1) broadcasting bug of hand-written backprop.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests check values, not speed: XLA compiles faster without its optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)

import functional_bp as fbp  # noqa: E402
from functional_bp import data  # noqa: E402

# (hidden activation, output activation, cost): every activation with every cost it is
# defined for, softmax among them.
ACTIVATION_NAMES = ["sigmoid", "tanh", "relu", "identity"]
COMBOS = (
    [(act, None, cost) for act in ACTIVATION_NAMES for cost in ("quadratic", "squared_error")]
    + [(act, "sigmoid", "cross_entropy") for act in ACTIVATION_NAMES]
    + [(act, "softmax", "log_likelihood") for act in ACTIVATION_NAMES]
    + [
        ("tanh", "sigmoid", "log_likelihood"),
        ("sigmoid", "softmax", "quadratic"),
        ("softmax", "sigmoid", "cross_entropy"),
    ]
)


def combo_id(combo):
    act, out, cost = (getattr(part, "name", part) for part in combo)  # user objects by name
    return f"{act}-{out or act}-{cost}"


# The quick tier (`pytest -m "not slow"`, `make check`) runs a suite on these combos
# only: network.py's, network3.py's softmax and network2.py's cross-entropy.
QUICK_COMBOS = (
    ("sigmoid", None, "quadratic"),
    ("tanh", "softmax", "log_likelihood"),
    ("relu", "sigmoid", "cross_entropy"),
)


def combo_params(combos, quick=QUICK_COMBOS):
    """pytest parameters for ``combos``: those in ``quick`` in the quick tier, the others
    marked slow (the whole suite runs them all)."""
    return [
        pytest.param(combo, id=combo_id(combo), marks=() if combo in quick else pytest.mark.slow)
        for combo in combos
    ]


def network(combo):
    """The `Network` of a (hidden activation, output activation, cost) combo."""
    act, out, cost = combo
    return fbp.Network(activation=act, output_activation=out, cost=cost)


# User objects whose derivatives reduce over the neurons of one example: the batched
# paths must call them on one example at a time.
NORM_COST = fbp.Cost(
    lambda a, y: jnp.linalg.norm(a - y),
    lambda a, y: (a - y) / jnp.linalg.norm(a - y),
    name="norm",
)
LOGSUMEXP_COST = fbp.Cost(  # softmax cross-entropy written on the outputs a
    lambda a, y: jax.nn.logsumexp(a) - jnp.dot(y, a) / jnp.sum(y),
    lambda a, y: jax.nn.softmax(a) - y / jnp.sum(y),
    name="logsumexp",
)


def _normalise_vjp(z, a, g):
    # a = z / s with s = sqrt(1 + |z|^2): da_j/dz_k = delta_jk / s - z_j z_k / s^3.
    s = jnp.sqrt(1 + jnp.dot(z, z))
    return g / s - z * jnp.dot(g, z) / s**3


NORMALISE = fbp.Activation(
    lambda z: z / jnp.sqrt(1 + jnp.dot(z, z)), name="normalise", vjp=_normalise_vjp
)


def random_sizes(rng, *, max_depth=5, max_width=64):
    """Depth 1 to max_depth layers, widths 1 to max_width, one in four a width-1 chain."""
    depth = int(rng.integers(1, max_depth + 1))
    if rng.random() < 0.25:
        return [1] * (depth + 1)
    return [int(n) for n in rng.integers(1, max_width + 1, size=depth + 1)]


def random_problem(seed, dtype=np.float64, batch=None, sizes=None, cost="quadratic"):
    """Params, xs, ys for a random architecture; targets in (0, 1) as the costs expect."""
    rng = np.random.default_rng(seed)
    sizes = random_sizes(rng) if sizes is None else sizes
    batch = int(rng.integers(1, 9)) if batch is None else batch
    params = [
        fbp.Layer(
            rng.normal(size=(n_out, n_in)).astype(dtype) / np.sqrt(n_in).astype(dtype),
            rng.normal(size=(n_out,)).astype(dtype),
        )
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]
    params = jax.device_put(params)  # (jnp.asarray would compile a small program per shape)
    xs = rng.normal(size=(batch, sizes[0])).astype(dtype)
    ys = rng.uniform(0.05, 0.95, size=(batch, sizes[-1])).astype(dtype)
    return params, xs, ys


def assert_tree_close(actual, expected, rtol, atol=0.0):
    """Structure, shapes and dtypes first, then each leaf to rtol relative to that leaf's
    largest entry (so that entries near zero do not need an absolute tolerance), or to
    ``atol`` for a leaf that is all rounding (a dead relu layer's gradient)."""
    # In numpy: eager jax.numpy would compile a small program for every new shape.
    actual, expected = jax.device_get((actual, expected))
    chex.assert_trees_all_equal_structs(actual, expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(e))
        scale = float(np.max(np.abs(e))) if np.size(e) else 0.0
        chex.assert_trees_all_close(a, e, rtol=rtol, atol=max(rtol * scale, atol))


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True, scope="session")
def _doctest_names(doctest_namespace):
    """The names the library's ``>>>`` examples use unqualified: jax, jnp, np, fbp and
    every top-level name of functional_bp. A conftest's fixtures reach only the tests
    below it, so for the doctests of functional_bp/ this file is loaded as a plugin:
    ``pytest -p conftest --doctest-modules functional_bp`` (pythonpath has tests/)."""
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, fbp=fbp)
    doctest_namespace.update({name: getattr(fbp, name) for name in fbp.__all__})


# The command line's fixtures (tests/cli, tests/bad_input).


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if any data set is loaded: for what must be refused before."""

    def loaded(*args, **kwargs):
        pytest.fail("a data set was loaded")

    monkeypatch.setattr(data, "load_digits", loaded)
    monkeypatch.setattr(data, "load_mnist", loaded)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs the test in an empty temporary directory, so that nothing can land in the
    repository; returns it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def interruptible_module(module: str) -> list[str]:
    """The command line ``python -m module`` with SIGINT raising KeyboardInterrupt even
    where it is inherited as ignored (a shell starting a job in the background, nohup or
    ``&`` without job control, ignores it; Python then installs no handler)."""
    code = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__', "
        "alter_sys=True)"
    )
    return [sys.executable, "-c", code]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's compiled programs. XLA's CPU backend maps a few
    memory regions per program, and a worker that keeps the thousands this suite compiles
    reaches the kernel's limit of 65,530 maps and crashes (a segfault in compilation)."""
    yield
    jax.clear_caches()
    gc.collect()
