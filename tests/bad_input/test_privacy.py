"""functional_bp.privacy: every accounting and sampling argument checked before any
work, each refusal naming the argument; poisson_epoch's gradient must carry a mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import functional_bp as fbp
from functional_bp import privacy
from functional_bp.per_example import ClippedGradient, PrivateGradient

KEY = jax.random.key(0)
PARAMS = fbp.init_mlp(KEY, [3, 2])
XS, YS = jnp.ones((10, 3)), jnp.zeros((10, 2))
SGD = optax.sgd(0.1)

RATES = [0, 1.5, -0.1, float("nan"), jnp.array(1.5), np.float64(0.0), "0.1", True]
SIGMAS = [0, -1, float("inf"), jnp.array(-1.0), None]
DELTAS = [0, 1, 2, jnp.array(1.0), float("nan")]
STEPS = [0, 1.5, True, -3, jnp.array(10)]


@pytest.mark.parametrize("value", RATES, ids=repr)
@pytest.mark.parametrize("function", ["epsilon", "noise_multiplier"])
def test_sample_rate(function, value):
    first = {"epsilon": 1.0, "noise_multiplier": 2.0}[function]
    with pytest.raises((TypeError, ValueError), match="sample_rate"):
        getattr(privacy, function)(first, value, 10, 1e-5)


@pytest.mark.parametrize("value", SIGMAS, ids=repr)
def test_noise_multiplier_of_epsilon(value):
    with pytest.raises((TypeError, ValueError), match="noise_multiplier"):
        privacy.epsilon(value, 0.01, 10, 1e-5)


@pytest.mark.parametrize("value", [0, -1, float("inf"), jnp.array(0.0), "3"], ids=repr)
def test_target_epsilon(value):
    with pytest.raises((TypeError, ValueError), match="target_epsilon"):
        privacy.noise_multiplier(value, 0.01, 10, 1e-5)


@pytest.mark.parametrize("value", DELTAS, ids=repr)
@pytest.mark.parametrize("function", ["epsilon", "noise_multiplier"])
def test_delta(function, value):
    with pytest.raises((TypeError, ValueError), match="delta"):
        getattr(privacy, function)(1.0, 0.01, 10, value)


@pytest.mark.parametrize("value", STEPS, ids=repr)
@pytest.mark.parametrize("function", ["epsilon", "noise_multiplier"])
def test_steps(function, value):
    with pytest.raises((TypeError, ValueError), match="steps"):
        getattr(privacy, function)(1.0, 0.01, value, 1e-5)


@pytest.mark.parametrize("value", ["zzz", "RDP", 1, None], ids=repr)
@pytest.mark.parametrize("function", ["epsilon", "noise_multiplier"])
def test_accountant(function, value):
    with pytest.raises((TypeError, ValueError), match="accountant"):
        getattr(privacy, function)(1.0, 0.01, 10, 1e-5, accountant=value)


def test_the_messages_say_what_is_expected():
    with pytest.raises(
        ValueError, match=r"Expected sample_rate to be a number in \(0, 1\], got 1.5"
    ):
        privacy.epsilon(1.0, 1.5, 10, 1e-5)
    with pytest.raises(ValueError, match=r"Expected delta to be a number in \(0, 1\), got 1.0"):
        privacy.epsilon(1.0, 0.5, 10, 1.0)
    with pytest.raises(ValueError, match=r"Expected accountant to be one of \['rdp', 'pld'\]"):
        privacy.epsilon(1.0, 0.5, 10, 1e-5, accountant="zzz")


def test_no_accounting_happens_before_the_checks(monkeypatch):
    monkeypatch.setattr(privacy, "_dp_accounting", lambda: pytest.fail("accounting started"))
    with pytest.raises(ValueError, match="delta"):
        privacy.epsilon(1.0, 0.5, 10, 0.0)


# Sampling.


@pytest.mark.parametrize("value", RATES, ids=repr)
@pytest.mark.parametrize(
    "call",
    [
        lambda v: privacy.steps_per_epoch(v),
        lambda v: privacy.default_max_batch(10, v),
        lambda v: privacy.poisson_batch(KEY, 10, v, 5),
        lambda v: privacy.batch_overflow(KEY, 10, v, 5),
        lambda v: privacy.epoch_overflow(KEY, 10, sample_rate=v),
    ],
    ids=[
        "steps_per_epoch",
        "default_max_batch",
        "poisson_batch",
        "batch_overflow",
        "epoch_overflow",
    ],
)
def test_sample_rate_of_sampling(call, value):
    with pytest.raises((TypeError, ValueError), match="sample_rate"):
        call(value)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"], ids=repr)
def test_max_batch(value):
    with pytest.raises((TypeError, ValueError), match="max_batch"):
        privacy.poisson_batch(KEY, 10, 0.5, value)
    with pytest.raises((TypeError, ValueError), match="max_batch"):
        privacy.epoch_overflow(KEY, 10, sample_rate=0.5, max_batch=value)
    with pytest.raises((TypeError, ValueError), match="max_batch"):
        _epoch(max_batch=value)


@pytest.mark.parametrize("value", [0, -1, 2.5, True], ids=repr)
def test_num_examples(value):
    with pytest.raises((TypeError, ValueError), match="num_examples"):
        privacy.default_max_batch(value, 0.5)
    with pytest.raises((TypeError, ValueError), match="num_examples"):
        privacy.poisson_batch(KEY, value, 0.5, 4)


@pytest.mark.parametrize("value", [3, "key", jax.random.split(KEY, 2)], ids=["int", "str", "keys"])
def test_key(value):
    with pytest.raises(TypeError, match="key"):
        privacy.poisson_batch(value, 10, 0.5, 4)
    with pytest.raises(TypeError, match="key"):
        _epoch(key=value)


# poisson_epoch.


PRIVATE = PrivateGradient(1.0, 1.0)


def _epoch(key=KEY, sample_rate=0.5, gradient=PRIVATE, max_batch=None, xs=XS):
    return privacy.poisson_epoch(
        key,
        SGD,
        PARAMS,
        SGD.init(PARAMS),
        xs,
        YS[: xs.shape[0]],
        sample_rate=sample_rate,
        gradient=gradient,
        max_batch=max_batch,
    )


@pytest.mark.parametrize(
    "gradient", [fbp.training.MeanGradient(), None, "private"], ids=["mean", "none", "str"]
)
def test_poisson_epoch_needs_a_clipped_or_private_gradient(gradient):
    with pytest.raises(TypeError, match="gradient to be a per_example.PrivateGradient or Clipped"):
        _epoch(gradient=gradient)


@pytest.mark.parametrize("value", RATES, ids=repr)
def test_sample_rate_of_poisson_epoch(value):
    with pytest.raises((TypeError, ValueError), match="sample_rate"):
        _epoch(sample_rate=value)


@pytest.mark.parametrize(
    "gradient,match",
    [
        (PrivateGradient(-1.0, 1.0), "clip_norm"),
        (PrivateGradient(1.0, -1.0), "noise_multiplier"),
        (PrivateGradient(1.0, jnp.array(jnp.nan)), "noise_multiplier"),
        (ClippedGradient(0.0), "clip_norm"),
    ],
)
def test_the_gradients_values_in_poisson_epoch(gradient, match):
    with pytest.raises(ValueError, match=match):
        _epoch(gradient=gradient)


def test_an_empty_training_set():
    with pytest.raises(ValueError, match="xs to hold at least one example"):
        _epoch(xs=jnp.ones((0, 3)))


def test_many_names_the_run_of_a_bad_gradient():
    epoch = fbp.training.many(privacy.poisson_epoch, per_run=["params", "gradient"])
    params = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), PARAMS)
    gradients = PrivateGradient(jnp.array([1.0, -1.0]), jnp.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"gradient\[1\].*clip_norm"):
        epoch(KEY, SGD, params, SGD.init(PARAMS), XS, YS, sample_rate=0.5, gradient=gradients)


# The new fields of the DP gradients.


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), jnp.array(0.0), "5"], ids=repr)
@pytest.mark.parametrize("cls", [ClippedGradient, PrivateGradient])
def test_expected_batch_size(cls, value):
    args = (1.0,) if cls is ClippedGradient else (1.0, 1.0)
    gradient = cls(*args, expected_batch_size=value)
    with pytest.raises((TypeError, ValueError), match="expected_batch_size"):
        fbp.training.train_step(KEY, SGD, PARAMS, SGD.init(PARAMS), XS, YS, gradient=gradient)


@pytest.mark.parametrize(
    "mask,error,match",
    [
        (jnp.ones(9, bool), ValueError, r"mask to have shape \(10,\).*got shape \(9,\)"),
        (jnp.ones((10, 1), bool), ValueError, r"mask to have shape \(10,\)"),
        ([True] * 10, TypeError, "mask to be an array"),
        (jnp.ones(10, jnp.complex64), TypeError, "mask to be an array"),
    ],
    ids=["short", "column", "list", "complex"],
)
@pytest.mark.parametrize("cls", [ClippedGradient, PrivateGradient])
def test_mask(cls, mask, error, match):
    args = (1.0,) if cls is ClippedGradient else (1.0, 1.0)
    gradient = cls(*args, expected_batch_size=5.0, mask=mask)
    with pytest.raises(error, match=match):
        fbp.training.train_step(KEY, SGD, PARAMS, SGD.init(PARAMS), XS, YS, gradient=gradient)
