r"""Private training you can report: Poisson-sampled DP-SGD and its privacy accounting.

DP-SGD (Abadi et al. 2016) is (epsilon, delta)-differentially private when each step's
batch is a Poisson sample: every example joins independently with probability q (the
``sample_rate``), its gradient is clipped to norm C and Gaussian noise of std sigma C is
added to the sum (`per_example.PrivateGradient`). The accountant turns (sigma, q, steps,
delta) into epsilon:

\[ g_t = \frac{1}{q N} \Big[ \sum_{i \in B_t} \min\Big(1, \frac{C}{\lVert g_i \rVert}
\Big) g_i + \mathcal{N}(0, \sigma^2 C^2 I) \Big], \qquad
\Pr[i \in B_t] = q \text{ independently.} \]

- Accounting: `epsilon` and `noise_multiplier`, with Google's ``dp-accounting`` (RDP,
  Mironov 2017, or privacy-loss distributions, PLD), installed by
  ``pip install "functional_bp[privacy]"``.
- Sampling: `poisson_batch` draws a batch padded to a fixed size ``max_batch`` (one
  compiled program for every step) with a mask of its real examples; `default_max_batch`
  picks a size the batch overflows with probability at most 1e-9 per step, and
  `batch_overflow` and `epoch_overflow` count the examples an overflow dropped.
- Training: `poisson_epoch` runs `steps_per_epoch` steps of `training.train_step`, each
  on a Poisson batch, in one `jax.lax.scan`; it works under `training.many`.

Reported privacy holds for the mechanism as run: Poisson sampling with the sample rate
and steps given to the accountant. A batch that overflows ``max_batch`` drops examples,
which only removes contributions (count them with `epoch_overflow`); `poisson_epoch`
refuses a ``max_batch`` below the expected batch q N and warns when a step's batch
overflows it with probability above `OVERFLOW_PROBABILITY`, with the figure.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from functional_bp import training
from functional_bp._validation import check_int, check_key, check_number, check_values
from functional_bp.network import Network, jit_with_net
from functional_bp.per_example import ClippedGradient, PrivateGradient

Array = jax.Array

__all__ = [
    "ACCOUNTANTS",
    "OVERFLOW_PROBABILITY",
    "UnreachableTarget",
    "batch_overflow",
    "default_max_batch",
    "epoch_overflow",
    "epsilon",
    "noise_multiplier",
    "overflow_probability",
    "poisson_batch",
    "poisson_epoch",
    "steps_per_epoch",
]

ACCOUNTANTS = ("rdp", "pld")
"""The accountants: "rdp" (Renyi DP, Mironov 2017; fast, an upper bound) and "pld"
(privacy-loss distributions, Koskela et al. 2020; tighter, slower)."""

OVERFLOW_PROBABILITY = 1e-9
"""`default_max_batch`'s bound on the probability that a step's batch overflows."""

_INSTALL = 'pip install "functional_bp[privacy]"'


# Checks, before any work.


def _check_rate(value: Any, name: str = "sample_rate") -> float:
    check_number(value, name, minimum=0, inclusive=False)
    value = float(np.asarray(value))
    if value > 1:
        raise ValueError(f"Expected {name} to be a number in (0, 1], got {value} instead")
    return value


def _check_delta(value: Any, name: str = "delta") -> float:
    check_number(value, name, minimum=0, inclusive=False)
    value = float(np.asarray(value))
    if value >= 1:
        raise ValueError(f"Expected {name} to be a number in (0, 1), got {value} instead")
    return value


def _check_positive(value: Any, name: str) -> float:
    check_number(value, name, minimum=0, inclusive=False)
    return float(np.asarray(value))


def _check_accountant(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"Expected accountant to be one of {list(ACCOUNTANTS)}, got "
            f"{type(value).__name__} {value!r} instead"
        )
    if value not in ACCOUNTANTS:
        raise ValueError(
            f"Expected accountant to be one of {list(ACCOUNTANTS)}, got {value!r} instead"
        )
    return value


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError(
            f"Privacy accounting needs the dp-accounting package: {_INSTALL}"
        ) from error
    return dp_accounting


def _event(dp_accounting, sigma: float, sample_rate: float, steps: int):
    """``steps`` Poisson-sampled Gaussian mechanisms, composed."""
    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _make_accountant(dp_accounting, accountant: str):
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant
    return dp_accounting.pld.PLDAccountant


# Accounting.


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "rdp",
) -> float:
    r"""The epsilon of ``steps`` DP-SGD steps at noise ``noise_multiplier`` (sigma) and
    Poisson sample rate ``sample_rate`` (q), for ``delta``: the Poisson-subsampled
    Gaussian mechanism composed ``steps`` times, under add-or-remove-one adjacency:

    \[ \varepsilon = \varepsilon_\delta\Big( \big( \mathcal{S}_q \circ
    \mathcal{N}(0, \sigma^2) \big)^{\otimes T} \Big). \]

    With "rdp", ``dp_accounting.rdp.RdpAccountant``; with "pld",
    ``dp_accounting.pld.PLDAccountant`` (tighter). Needs ``dp-accounting``
    (``pip install "functional_bp[privacy]"``).

    What it guarantees: (epsilon, delta)-DP per row of the training set for a run of
    exactly this mechanism (`poisson_epoch` with a `per_example.PrivateGradient` of this
    sigma, at this rate, for this many steps); an upper bound with "rdp". What voids it:
    a run that differs from what is accounted (fixed-size or shuffled batches, another
    rate, more steps, a reused key).

    Args:
      noise_multiplier: sigma, the noise std over the clip norm; finite and > 0.
      sample_rate: q, each example's probability to join a batch; in (0, 1].
      steps: T, the number of steps; an int >= 1.
      delta: in (0, 1); usually below 1 / N.
      accountant: "rdp" or "pld" (`ACCOUNTANTS`).

    Returns:
      epsilon, a float.

    Raises (before any work):
      ValueError, TypeError: a value out of its range, named; ImportError without
        dp-accounting.

    Examples:
      >>> eps = fbp.privacy.epsilon(1.1, 256 / 60000, 14062, 1e-5)  # Opacus's MNIST
      >>> round(eps, 2)
      2.6
    """
    sigma = _check_positive(noise_multiplier, "noise_multiplier")
    sample_rate = _check_rate(sample_rate)
    steps = check_int(steps, "steps")
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    dp_accounting = _dp_accounting()
    ledger = _make_accountant(dp_accounting, accountant)()
    ledger.compose(_event(dp_accounting, sigma, sample_rate, steps))
    return float(ledger.get_epsilon(delta))


class UnreachableTarget(ValueError):
    """A ``target_epsilon`` that no noise multiplier up to dp-accounting's search limit
    reaches (`noise_multiplier`)."""


def noise_multiplier(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "rdp",
) -> float:
    r"""The smallest noise multiplier sigma whose `epsilon` is at most
    ``target_epsilon``, found by ``dp_accounting.calibrate_dp_mechanism`` (a bracketed
    search, to 1e-4 in sigma, on the safe side: epsilon(sigma) <= target):

    \[ \sigma^* = \min \{ \sigma : \varepsilon(\sigma, q, T, \delta) \le
    \varepsilon_{\text{target}} \}. \]

    Args:
      target_epsilon: finite and > 0.
      sample_rate: q, in (0, 1].
      steps: T, an int >= 1.
      delta: in (0, 1).
      accountant: "rdp" or "pld" ("pld" takes seconds).

    Returns:
      sigma, a float.

    Raises (before any training):
      ValueError: a value out of its range, named; `UnreachableTarget` (a ValueError)
        for a ``target_epsilon`` that no sigma up to dp-accounting's search limit
        reaches (the rate, steps and delta named).

    Examples:
      >>> sigma = fbp.privacy.noise_multiplier(3.0, 256 / 60000, 14062, 1e-5)
      >>> round(sigma, 2)
      1.01
    """
    target = _check_positive(target_epsilon, "target_epsilon")
    sample_rate = _check_rate(sample_rate)
    steps = check_int(steps, "steps")
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    dp_accounting = _dp_accounting()
    try:
        sigma = dp_accounting.calibrate_dp_mechanism(
            _make_accountant(dp_accounting, accountant),
            lambda sigma: _event(dp_accounting, sigma, sample_rate, steps),
            target,
            delta,
            tol=1e-4,
        )
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError:
        raise UnreachableTarget(
            f"Expected a target_epsilon the {accountant!r} accountant can reach, got "
            f"{target:g}: no noise multiplier up to dp-accounting's search limit gives "
            f"epsilon <= {target:g} at sample rate {sample_rate:g}, {steps} steps and delta "
            f"{delta:g}; raise the target, or lower the sample rate or the steps"
        ) from None
    return float(sigma)


# Poisson sampling.


def steps_per_epoch(sample_rate: float) -> int:
    """Steps of an epoch at sample rate q: round(1 / q), at least 1, so that an epoch
    sees N examples in expectation.

    Examples:
      >>> fbp.privacy.steps_per_epoch(256 / 60000)
      234
    """
    sample_rate = _check_rate(sample_rate)
    return max(1, round(1 / sample_rate))


def _kl(a: float, q: float) -> float:
    """KL(Bernoulli(a) || Bernoulli(q)) for q < a <= 1."""
    out = a * math.log(a / q)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - q))
    return out


def default_max_batch(num_examples: int, sample_rate: float) -> int:
    r"""A padded batch size for Poisson sampling: the smallest m whose Chernoff bound on
    a Binomial(N, q) batch overflowing it is at most `OVERFLOW_PROBABILITY` (1e-9) per
    step, capped at N:

    \[ \Pr[|B| > m] \le \exp\big(-N\, \mathrm{KL}\big(\tfrac{m + 1}{N} \,\big\|\, q
    \big)\big) \le 10^{-9}. \]

    About q N + 7 sqrt(q N (1 - q)) (Opacus's MNIST, N = 60,000 and q = 256 / 60,000:
    365 for a mean of 256); relatively more for small batches. Over an epoch of T steps
    an overflow happens with probability at most T * 1e-9. Every padded entry is
    computed (and masked out), so a step costs about m / (q N) of an unpadded one: pass
    a smaller ``max_batch`` to `poisson_epoch` to trade that for overflows, which
    `epoch_overflow` counts.

    Examples:
      >>> fbp.privacy.default_max_batch(60000, 256 / 60000)
      365
      >>> fbp.privacy.default_max_batch(10, 1.0)
      10
    """
    n = check_int(num_examples, "num_examples")
    q = _check_rate(sample_rate)
    if q == 1:
        return n
    bound = -math.log(OVERFLOW_PROBABILITY)
    low = max(1, math.ceil(q * n))  # the bound holds for m + 1 > q N
    if low >= n:
        return n
    # Smallest m in [low, n) with N KL((m + 1) / N || q) >= log(1e9); KL grows with m.
    if n * _kl(n / n, q) < bound:
        return n
    hi = n - 1
    while low < hi:
        mid = (low + hi) // 2
        if n * _kl((mid + 1) / n, q) >= bound:
            hi = mid
        else:
            low = mid + 1
    return low


@functools.partial(jax.jit, static_argnames=("num_examples", "max_batch"))
def _poisson_batch(key, num_examples, sample_rate, max_batch):
    chosen = jax.random.bernoulli(key, sample_rate, (num_examples,))
    (indices,) = jnp.nonzero(chosen, size=max_batch, fill_value=0)
    count = jnp.sum(chosen, dtype=jnp.int32)
    return indices, jnp.arange(max_batch) < count, jnp.maximum(count - max_batch, 0)


def _check_sampling(key, num_examples, sample_rate, max_batch) -> tuple[int, float, int]:
    check_key(key)
    n = check_int(num_examples, "num_examples")
    q = _check_rate(sample_rate)
    m = check_int(max_batch, "max_batch")
    return n, q, m


def poisson_batch(
    key: Array, num_examples: int, sample_rate: float, max_batch: int
) -> tuple[Array, Array]:
    """A Poisson sample of ``range(num_examples)``, padded to ``max_batch`` entries.

    Every example joins independently with probability q: ``chosen =
    jax.random.bernoulli(key, sample_rate, (num_examples,))``. The chosen indices come
    first, in increasing order, then index 0 as padding; ``mask`` marks the real ones.
    A sample of more than ``max_batch`` examples keeps the first ``max_batch`` (lowest
    indices) and drops the others: `batch_overflow` counts them, and
    `default_max_batch` makes it rare (at most 1e-9 per step).

    Args:
      key: a `jax.random` key.
      num_examples: N, an int >= 1.
      sample_rate: q, in (0, 1].
      max_batch: the padded size, an int >= 1.

    Returns:
      ``(indices, mask)``: int32 indices of shape (max_batch,) and a bool mask of shape
      (max_batch,), True for a real example.

    Examples:
      >>> indices, mask = fbp.privacy.poisson_batch(jax.random.key(0), 10, 0.5, 8)
      >>> indices.shape, mask.dtype
      ((8,), dtype('bool'))
    """
    n, q, m = _check_sampling(key, num_examples, sample_rate, max_batch)
    indices, mask, _ = _poisson_batch(key, n, q, m)
    return indices, mask


def batch_overflow(key: Array, num_examples: int, sample_rate: float, max_batch: int) -> Array:
    """How many examples `poisson_batch` with the same arguments dropped: the sample's
    size above ``max_batch`` (0 almost always).

    Examples:
      >>> int(fbp.privacy.batch_overflow(jax.random.key(0), 10, 1.0, 8))
      2
    """
    n, q, m = _check_sampling(key, num_examples, sample_rate, max_batch)
    return _poisson_batch(key, n, q, m)[2]


def _step_keys(key, sample_rate):
    """Step t's (batch key, noise key): ``jax.random.split(jax.random.split(key,
    steps)[t])``."""
    keys = jax.random.split(key, steps_per_epoch(sample_rate))
    return jax.vmap(jax.random.split)(keys)


def _check_dp_gradient(gradient, name: str) -> None:
    if not isinstance(gradient, (PrivateGradient, ClippedGradient)):
        raise TypeError(
            f"Expected {name} to be a per_example.PrivateGradient or ClippedGradient (a "
            f"Poisson batch needs its mask and expected batch size), got "
            f"{type(gradient).__name__} instead"
        )
    gradient.check_values()


def _optional_max_batch(value, name: str) -> None:
    if value is not None:
        check_int(value, name)


def overflow_probability(num_examples: int, sample_rate: float, max_batch: int) -> float:
    r"""A bound on the probability that a Poisson batch of ``num_examples`` at rate q
    holds more than ``max_batch`` examples: the Chernoff bound `default_max_batch`
    uses, 1 where it says nothing (m + 1 <= q N), 0 for m >= N:

    \[ \Pr[|B| > m] \le \exp\big(-N\, \mathrm{KL}\big(\tfrac{m + 1}{N} \,\big\|\, q
    \big)\big). \]

    Examples:
      >>> fbp.privacy.overflow_probability(60000, 256 / 60000, 365) <= 1e-9
      True
      >>> round(fbp.privacy.overflow_probability(200, 0.5, 110), 3)
      0.297
      >>> fbp.privacy.overflow_probability(200, 0.5, 99)
      1.0
    """
    n = check_int(num_examples, "num_examples")
    q = _check_rate(sample_rate)
    m = check_int(max_batch, "max_batch")
    if m >= n:
        return 0.0
    if m + 1 <= q * n:
        return 1.0
    return math.exp(-n * _kl((m + 1) / n, q))


def _resolve(xs, sample_rate, max_batch) -> tuple[int, float, int]:
    n = np.shape(xs)[0] if np.ndim(xs) else 0
    if n == 0:
        raise ValueError(
            f"Expected xs to hold at least one example, got shape {np.shape(xs)} instead"
        )
    q = _check_rate(sample_rate)
    if max_batch is None:
        return n, q, default_max_batch(n, q)
    m = check_int(max_batch, "max_batch")
    _check_max_batch(n, q, m)
    return n, q, m


def _check_max_batch(n: int, q: float, m: int) -> None:
    """A padded size below the expected batch q N drops sampled examples at most steps:
    refused. One above it that still overflows with probability above
    `OVERFLOW_PROBABILITY` per step trades dropped examples for speed: allowed, with a
    warning that gives the figure."""
    expected = q * n
    if m < min(n, math.ceil(expected)):
        raise ValueError(
            f"Expected max_batch >= the expected batch q N = {expected:g} (sample rate "
            f"{q:g}, {n} examples), got {m}: most steps would drop sampled examples "
            f"while the mean still divides by q N; leave max_batch=None for "
            f"default_max_batch ({default_max_batch(n, q)})"
        )
    p = overflow_probability(n, q, m)
    if p > OVERFLOW_PROBABILITY:
        steps = steps_per_epoch(q)
        warnings.warn(
            f"max_batch={m} at an expected batch of {expected:g}: a step's batch "
            f"overflows it with probability up to {p:.3g} (Chernoff bound), so up to "
            f"{min(1.0, p * steps):.3g} per epoch of {steps} steps drops sampled examples "
            f"(epoch_overflow counts them); default_max_batch gives "
            f"{default_max_batch(n, q)} (<= {OVERFLOW_PROBABILITY:g} per step)",
            stacklevel=5,
        )


def epoch_overflow(
    key: Array, num_examples: int, *, sample_rate: float, max_batch: Optional[int] = None
) -> Array:
    """Examples dropped by overflowing batches in the `poisson_epoch` of ``key`` (its
    steps draw the same batches); 0 almost always with the default ``max_batch``.

    Examples:
      >>> int(fbp.privacy.epoch_overflow(jax.random.key(0), 100, sample_rate=0.1))
      0
    """
    check_key(key)
    n = check_int(num_examples, "num_examples")
    q = _check_rate(sample_rate)
    m = default_max_batch(n, q) if max_batch is None else check_int(max_batch, "max_batch")
    return _epoch_overflow(key, n, q, m)


@functools.partial(jax.jit, static_argnames=("num_examples", "sample_rate", "max_batch"))
def _epoch_overflow(key, num_examples, sample_rate, max_batch):
    batch_keys = _step_keys(key, sample_rate)[:, 0]
    counts = jax.vmap(lambda k: _poisson_batch(k, num_examples, sample_rate, max_batch)[2])
    return jnp.sum(counts(batch_keys))


@jit_with_net(static=("optimizer", "sample_rate", "max_batch"))
def _poisson_epoch(
    key, optimizer, params, opt_state, xs, ys, *, sample_rate, max_batch, gradient, net
):
    n = xs.shape[0]
    gradient = dataclasses.replace(gradient, expected_batch_size=sample_rate * n)

    def body(carry, keys):
        batch_key, step_key = keys[0], keys[1]
        indices, mask, _ = _poisson_batch(batch_key, n, sample_rate, max_batch)
        step_gradient = dataclasses.replace(gradient, mask=mask)
        carry = training.train_step(
            step_key, optimizer, *carry, xs[indices], ys[indices], gradient=step_gradient, net=net
        )
        return carry, None

    carry, _ = jax.lax.scan(body, (params, opt_state), _step_keys(key, sample_rate))
    return carry


@check_values(key=check_key, gradient=_check_dp_gradient, max_batch=_optional_max_batch)
def poisson_epoch(
    key: Array,
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: optax.OptState,
    xs: Array,
    ys: Array,
    *,
    sample_rate: float,
    gradient: PrivateGradient | ClippedGradient,
    max_batch: Optional[int] = None,
    net: Network = Network(),
) -> tuple[Any, optax.OptState]:
    r"""One epoch of DP-SGD with Poisson sampling: `steps_per_epoch` (round(1/q)) steps,
    each a `training.train_step` on a `poisson_batch` of ``xs`` with ``gradient``'s
    mask set to the batch's and its expected batch size to q N, in one `jax.lax.scan`
    (one compiled program for every step):

    \[ \theta_{t+1} = \mathrm{update}\Big(\frac{1}{qN} \Big[\sum_{i \in B_t}
    \mathrm{clip}_C(g_i) + \mathcal{N}(0, \sigma^2 C^2 I)\Big]\Big), \quad
    \Pr[i \in B_t] = q. \]

    Step t's keys are ``batch_key, step_key = jax.random.split(jax.random.split(key,
    steps)[t])``: ``batch_key`` draws the batch (`poisson_batch`), ``step_key`` is the
    step's (the noise). Works with any optax optimizer and under `training.many`
    (per-run keys, params, optimizer states and gradients). Account for it with
    `epsilon`: ``epsilon(sigma, sample_rate, epochs * steps_per_epoch(sample_rate),
    delta)``.

    What it guarantees: with a `per_example.PrivateGradient`, each step is a Poisson
    sample at rate q of ``xs`` (every example independently), clipped to C, with
    Gaussian noise of std sigma C on the sum, divided by q N: the mechanism `epsilon`
    accounts for, at ``steps_per_epoch(q)`` steps an epoch. What voids it: accounting
    other steps or another rate than were run, reusing ``key`` for another epoch (the
    same batches and noise), or ``xs`` that hold one person's data in several rows
    (the guarantee is per row). A `ClippedGradient` adds no noise and guarantees
    nothing.

    Args:
      key: a `jax.random` key.
      optimizer: an optax ``GradientTransformation`` (static: make it once).
      params: a list of `Layer`.
      opt_state: ``optimizer.init(params)`` or the last state.
      xs: the training set, shape (N, n_in).
      ys: its targets, shape (N, n_out) (or class labels).
      sample_rate: q in (0, 1] (static: the number of steps and the padded size
        depend on it).
      gradient: a `per_example.PrivateGradient` (DP-SGD) or `ClippedGradient` (no
        noise); its mask and expected batch size are set here.
      max_batch: the padded batch size (static); `default_max_batch(N, q)` when None.
        Examples above it are dropped (`epoch_overflow` counts them); one below the
        expected batch q N is refused, and one that overflows with probability above
        `OVERFLOW_PROBABILITY` per step warns with the figure (`overflow_probability`).
      net: the `Network`.

    Returns:
      ``(params, opt_state)`` after the epoch.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2])
      >>> xs, ys = jnp.ones((20, 3)), jnp.zeros((20, 2))
      >>> optimizer = fbp.training.sgd(0.1)
      >>> gradient = fbp.per_example.PrivateGradient(clip_norm=1.0, noise_multiplier=1.1)
      >>> new, _ = fbp.privacy.poisson_epoch(jax.random.key(1), optimizer, params,
      ...     optimizer.init(params), xs, ys, sample_rate=0.25, gradient=gradient)
      >>> new[0].w.shape
      (2, 3)
    """
    _, q, m = _resolve(xs, sample_rate, max_batch)
    return _poisson_epoch(
        key,
        optimizer,
        params,
        opt_state,
        xs,
        ys,
        sample_rate=q,
        max_batch=m,
        gradient=gradient,
        net=net,
    )
