"""What a training run is: its `Config`, the checks that refuse impossible ones before any
data is loaded, the optimizer it trains with, and the data it trains on."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from functional_bp import core, curvature, data, feedback, training
from functional_bp._files import check_writable
from functional_bp.network import Network
from functional_bp.params import INITS

__all__ = [
    "DATASETS",
    "MAX_RUNS",
    "MAX_SEED",
    "MEANINGFUL",
    "ACCOUNTANTS",
    "OPTIMIZERS",
    "RULES",
    "TRACKS",
    "Config",
    "Data",
    "Privacy",
    "check",
    "check_outputs",
    "load",
    "memory_estimate",
    "memory_limit",
    "optimizer",
    "privacy_setting",
    "privacy_warnings",
]

# Each data set's input size; every one has 10 classes.
DATASETS = {"digits": 64, "mnist": 784}
NUM_CLASSES = 10
# Each data set's training examples (digits: 1797 less a test set of 359; mnist: network.py's
# 50,000), for the memory estimate before any data is loaded.
TRAIN_EXAMPLES = {"digits": 1438, "mnist": 50_000}
# Each data set's images, channels first, for networks with convolution or pooling.
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}

MAX_SEED = 2**32
"""Seeds are in [0, MAX_SEED): ``jax.random.key(s)`` keeps the low 32 bits of ``s``
(``key(2**32)`` is ``key(0)``), so a larger seed would silently repeat a smaller one."""

MAX_RUNS = 100_000
"""At most this many (seed, learning rate) runs in one job, whatever the memory: the
record holds a Python dict per run and epoch (about 1 KB), so 10**5 runs of 30 epochs
already hold some 3 GB of history on the host, and the sweep prints a line per run.
`memory_estimate` bounds the arrays below this."""

# The optax optimizers by name, each a factory of the learning rate alone.
_OPTAX = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=0.9),
    "nesterov": functools.partial(optax.sgd, momentum=0.9, nesterov=True),
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
}
# diag_ggn: diagonal Gauss-Newton descent (`curvature.diag_ggn_descent`).
OPTIMIZERS = (*_OPTAX, "diag_ggn")
# Each optimizer's state: arrays the size of the params (diag_ggn: the running curvature).
_SLOTS = dict(sgd=0, momentum=1, nesterov=1, adam=2, adamw=2, rmsprop=1, diag_ggn=1)
RULES = ("bp", *(rule for rule in feedback.RULES if rule != "bp"))
TRACKS = ("noise-scale", "layer-norms")
# The privacy accountants of `functional_bp.privacy` (dp-accounting's RDP and PLD).
ACCOUNTANTS = ("rdp", "pld")


@dataclasses.dataclass(frozen=True)
class Config:
    """One training job: one run, or every (seed, learning rate) pair trained at once.

    Attributes:
      dataset: "digits" (scikit-learn's 8x8, bundled) or "mnist".
      data_dir: the MNIST directory (None: ``$FUNCTIONAL_BP_MNIST`` or the cache).
      download: download MNIST if it is missing.
      eval_on: "test" or "validation" (MNIST only: digits has a test set alone).
      sizes: layer sizes, input first; None for the data set's default [n_in, 30, 10].
      layers: layer types instead of sizes, as text (`parse_layers`): "conv20x5,pool2,
        dense100" is a convolution of 20 filters 5x5, max-pooling 2x2 and 100 dense
        neurons, then the 10 output neurons. None: dense layers of ``sizes``.
      dropout: with ``layers``, dropout at this rate on the input of every dense layer
        (network3.py's ``p_dropout``); 0 for none.
      expand: train on the training set and its four one-pixel shifts (network3.py's
        expand_mnist.py; 5x the examples).
      activation: the `Network`'s.
      output_activation: the `Network`'s.
      cost: the `Network`'s.
      init: "normal" (network.py) or "scaled_normal" (network2.py and network3.py); None
        (the default) for the book's own: "normal" with ``sizes``, "scaled_normal" with
        ``layers``.
      seeds: one run per seed and learning rate; seed s draws the initial weights and
        the shuffles from ``jax.random.key(s)`` and a rule's B from ``key(s + 10**6)``.
      learning_rates: eta, one or several.
      epochs: as in network.py.
      batch_size: as in network.py.
      shared_shuffle: with several runs, one mini-batch order for all (the first run's).
      optimizer: one of `OPTIMIZERS`.
      lmbda: network2.py's L2 lambda: weight decay lmbda / n (n: training-set size), and
        the L2 term lmbda / (2 n) sum w^2 in the costs measured on a set of n examples.
      weight_decay: the per-step decay wd of the weights, w <- w - eta (g + wd w), not
        added to the costs; and, under rule "kp", the decay of B.
      damping: the diag_ggn optimizer's.
      ggn_decay: the diag_ggn optimizer's.
      rule: "bp" (backprop) or a learning rule of `functional_bp.feedback`.
      feedback_scale: the std of a rule's random B (None: 1/sqrt(n_l)).
      track: also record per epoch: "noise-scale" (`statistics.gradient_noise_scale`),
        "layer-norms" (`diagnostics.layer_gradient_norms`). A rule records its
        `feedback.alignment_angles` always.
      track_examples: the first this many training examples are what tracking uses.
      float64: train in float64 (needs ``jax_enable_x64``).
      dp: train with DP-SGD (`functional_bp.privacy.poisson_epoch`): each step takes every
        training example with probability q = batch_size / n (so batch_size is the
        expected batch), clips each example's gradient to ``clip``, adds Gaussian noise
        of std noise_multiplier * clip and divides by the expected batch; an epoch is
        round(1/q) such steps. The epsilon spent is recorded after every epoch.
      clip: dp: the per-example clipping norm C.
      noise_multiplier: dp: sigma, the noise's std in units of C; or
      target_epsilon: dp: the epsilon the whole run (epochs x round(1/q) steps) may
        spend; sigma is the smallest that keeps it (`privacy.noise_multiplier`).
      delta: dp: the delta of (epsilon, delta)-DP.
      accountant: dp: "rdp" (Renyi DP) or "pld" (privacy loss distributions).
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    download: bool = False
    eval_on: str = "test"
    sizes: Optional[tuple[int, ...]] = None
    layers: Optional[str] = None
    dropout: float = 0.0
    expand: bool = False
    activation: str = "sigmoid"
    output_activation: Optional[str] = None
    cost: str = "quadratic"
    init: Optional[str] = None
    seeds: tuple[int, ...] = (0,)
    learning_rates: tuple[float, ...] = (3.0,)
    epochs: int = 30
    batch_size: int = 10
    shared_shuffle: bool = False
    optimizer: str = "sgd"
    lmbda: float = 0.0
    weight_decay: float = 0.0
    damping: float = 0.1
    ggn_decay: float = 0.9
    rule: str = "bp"
    feedback_scale: Optional[float] = None
    track: tuple[str, ...] = ()
    track_examples: int = 5000
    float64: bool = False
    dp: bool = False
    clip: Optional[float] = None
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: float = 1e-5
    accountant: str = "rdp"

    @property
    def layer_sizes(self) -> list[int]:
        """``sizes``, or the data set's default [n_in, 30, 10]."""
        if self.sizes is None:
            return [DATASETS.get(self.dataset, 0), 30, NUM_CLASSES]
        return list(self.sizes)

    @property
    def net(self) -> Network:
        layers = None if self.layers is None else parse_layers(self.layers, self.dropout)
        return Network(self.activation, self.output_activation, self.cost, layers)

    @property
    def initialisation(self) -> str:
        """``init``, or the book's: network.py's "normal" for ``sizes``, network3.py's
        "scaled_normal" for ``layers``."""
        if self.init is not None:
            return self.init
        return "normal" if self.layers is None else "scaled_normal"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: an image (C, H, W) for layers that start with a
        convolution or pooling, else a vector."""
        net = self.net
        if core.example_ndim(net) == 3:
            return IMAGE_SHAPES[self.dataset]
        return (DATASETS[self.dataset],)

    @property
    def dtype(self):
        return jnp.float64 if self.float64 else jnp.float32

    @property
    def runs(self) -> list[tuple[int, float]]:
        """Every (seed, learning rate), learning rate by learning rate."""
        return [(seed, lr) for lr in self.learning_rates for seed in self.seeds]

    def weight_decays(self, num_examples: int) -> Optional[float]:
        """The per-step decay of the weights for a training set of ``num_examples``."""
        decay = self.lmbda / num_examples if self.lmbda else self.weight_decay
        return decay or None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_layers(text: str, dropout: float = 0.0) -> tuple:
    """The layer types of ``--layers`` text, comma-separated: ``convFxK`` (F filters of
    K x K, stride 1, no padding; ``convFxKsS`` stride S, ``convFxKpP`` P zeros around),
    ``poolS`` (max-pooling S x S), ``avgpoolS``, ``denseN``, ``dropoutR``. A `Flatten`
    goes before the first dense layer after images, and the 10 output neurons
    (``Dense(10)``) come last; ``dropout`` > 0 puts ``Dropout(dropout)`` on the input of
    every dense layer, as network3.py's ``p_dropout``.

    Examples:
      >>> parse_layers("conv20x5,pool2,dense100")  # doctest: +NORMALIZE_WHITESPACE
      (Conv2D(filters=20, kernel=(5, 5), stride=(1, 1), padding='valid'), MaxPool2D(size=2),
       Flatten(), Dense(n=100), Dense(n=10))
    """
    from functional_bp import layers as kinds

    patterns = [
        (
            r"conv(\d+)x(\d+)(?:s(\d+))?(?:p(\d+))?",
            lambda f, k, st, pad: kinds.Conv2D(
                int(f), int(k), stride=int(st or 1), padding=int(pad) if pad else "valid"
            ),
        ),
        (r"pool(\d+)", lambda n: kinds.MaxPool2D(int(n))),
        (r"avgpool(\d+)", lambda n: kinds.AvgPool2D(int(n))),
        (r"dense(\d+)", lambda n: kinds.Dense(int(n))),
        (r"dropout(0?\.\d+|0)", lambda r: kinds.Dropout(float(r))),
    ]
    specs, images = [], True
    tokens = [t.strip().lower() for t in str(text).split(",")]
    for token in tokens + ["dense10"]:
        found = [(make, m) for p, make in patterns if (m := re.fullmatch(p, token))]
        if not found:
            raise ValueError(
                f"Unknown layer {token!r} in layers {text!r}: expected convFxK (convFxKsSpP), "
                f"poolS, avgpoolS, denseN or dropoutR, comma-separated"
            )
        make, match = found[0]
        try:
            spec = make(*match.groups())
        except (TypeError, ValueError) as error:
            raise ValueError(f"layer {token!r} in layers {text!r}: {error}") from None
        if isinstance(spec, kinds.Dense):
            if images and any(not isinstance(s, kinds.Dropout) for s in specs):
                specs.append(kinds.Flatten())
            images = False
            if dropout:
                specs.append(kinds.Dropout(dropout))
        elif not images and not isinstance(spec, kinds.Dropout):
            raise ValueError(
                f"layer {token!r} in layers {text!r} comes after a dense layer: convolution "
                f"and pooling take images, so they come first"
            )
        specs.append(spec)
    return tuple(specs)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _one_of(value, name: str, choices) -> None:
    _require(value in choices, f"Unknown {name} {value!r}; expected one of {list(choices)}")


def _short(values: tuple) -> str:
    """A tuple for a message, at most 10 items shown."""
    shown = ", ".join(map(str, values[:10]))
    return f"({shown}{', ...' if len(values) > 10 else ''})"


def _numbers(config: Config) -> None:
    for name in ("epochs", "batch_size", "track_examples"):
        value = getattr(config, name)
        _require(
            isinstance(value, int) and value >= 1, f"Expected {name} >= 1, got {value!r} instead"
        )
    lrs, seeds = config.learning_rates, config.seeds
    _require(
        len(lrs) > 0 and all(math.isfinite(lr) and lr > 0 for lr in lrs),
        f"Expected finite learning rates > 0, got {lrs}",
    )
    _require(len(set(lrs)) == len(lrs), f"Expected distinct learning rates, got {lrs}")
    _require(
        len(seeds) > 0
        and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < MAX_SEED
            for s in seeds
        )
        and len(set(seeds)) == len(seeds),
        f"Expected distinct seeds, integers in [0, 2**32), got {_short(seeds)}: jax.random.key "
        "keeps a seed's low 32 bits, so a larger seed repeats a smaller one",
    )
    _require(
        len(config.runs) <= MAX_RUNS,
        f"{len(config.runs)} runs ({len(seeds)} seeds x {len(lrs)} learning rates) is more "
        f"than the {MAX_RUNS} one job holds: give fewer seeds or learning rates "
        "(--seeds, --learning-rate)",
    )
    for name in ("lmbda", "weight_decay", "damping"):
        value = getattr(config, name)
        _require(math.isfinite(value) and value >= 0, f"Expected {name} >= 0, got {value}")
    _require(config.damping > 0, f"Expected damping > 0, got {config.damping}")
    _require(0 <= config.ggn_decay < 1, f"Expected ggn_decay in [0, 1), got {config.ggn_decay}")
    _require(0 <= config.dropout < 1, f"Expected dropout in [0, 1), got {config.dropout}")


# The rules that draw random matrices (init_feedback's scale): the others take none.
_DRAWN = ("fa", "dfa", "kp", "frsf")


def _feedback_rule(config: Config) -> bool:
    return config.rule in _DRAWN


# Every field that only some configs use: field -> (when it is used, why it is not here).
# `check` refuses a field that is set where it would be ignored, rather than ignore it.
MEANINGFUL: dict[str, tuple[Callable[[Config], bool], Callable[[Config], str]]] = {
    "dropout": (
        lambda c: c.layers is not None,
        lambda c: (
            "it drops the inputs of the dense layers of layers (--layers), and none are given"
        ),
    ),
    "data_dir": (
        lambda c: c.dataset == "mnist",
        lambda c: f"it is where MNIST is, and dataset {c.dataset} is bundled",
    ),
    "download": (
        lambda c: c.dataset == "mnist",
        lambda c: f"it downloads MNIST, and dataset {c.dataset} is bundled",
    ),
    "shared_shuffle": (
        lambda c: len(c.runs) > 1,
        lambda c: (
            "it shares one mini-batch order among several runs, and there is one "
            "(give several seeds or learning rates)"
        ),
    ),
    "damping": (
        lambda c: c.optimizer == "diag_ggn",
        lambda c: f"it is optimizer diag_ggn's, not {c.optimizer}'s",
    ),
    "ggn_decay": (
        lambda c: c.optimizer == "diag_ggn",
        lambda c: f"it is optimizer diag_ggn's, not {c.optimizer}'s",
    ),
    "feedback_scale": (
        _feedback_rule,
        lambda c: f"it sets the std of a rule's random B; rule {c.rule} has none",
    ),
    **{
        field: (lambda c: c.dp, lambda c: "it is for private training, which is off (dp, --dp)")
        for field in ("clip", "noise_multiplier", "target_epsilon", "delta", "accountant")
    },
    "track_examples": (
        lambda c: bool(c.track) or c.rule != "bp",
        lambda c: (
            "it sets the examples of the tracked statistics, and nothing is tracked "
            "(no track, rule bp)"
        ),
    ),
}
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Config)}


def _ignored(config: Config, given: Optional[Mapping[str, str]]) -> None:
    """Refuses every field of ``given`` (field -> the name to report it by; None: the
    fields that differ from their default) that `MEANINGFUL` says is ignored."""
    if given is None:  # track_examples: a base config sets it for the runs that track
        given = {
            k: k for k in MEANINGFUL if k != "track_examples" and getattr(config, k) != _DEFAULTS[k]
        }
    for field, name in given.items():
        if field in MEANINGFUL:
            used, why = MEANINGFUL[field]
            _require(used(config), f"{name} would be ignored: {why(config)}")


def _layered(config: Config, net: Network, processes: int) -> None:
    """What a network of layer types cannot train with, and shapes that do not fit."""
    from functional_bp import layers as kinds

    _require(config.sizes is None, "give layers or sizes, not both")
    kinds.shapes(net, config.input_shape)  # a kernel too large, a pool that does not divide
    _require(
        "layer-norms" not in config.track,
        "track layer-norms is for dense layers only (diagnostics.layer_gradient_norms): not "
        "with layers",
    )
    _require(
        config.rule != "dfa" or not net.has_dropout,
        "rule dfa sends the output error straight to each hidden layer, past the dropout: "
        "not with dropout (use fa, kp, sign, usf, frsf or brsf)",
    )
    _require(
        processes == 1,
        "several processes train dense layers only (parallel.data_parallel_epoch), not "
        "layers (--layers): train them in one process",
    )


def _layered_counts(config: Config) -> tuple[int, int]:
    """(params, neurons) of the network: weights and biases, and every layer's outputs."""
    from functional_bp import layers as kinds

    if config.layers is None:
        sizes = config.layer_sizes
        return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:])), sum(sizes[1:])
    net = config.net
    params = sum(
        math.prod(w) + math.prod(b) for w, b in kinds.weight_shapes(net, config.input_shape)
    )
    neurons = sum(math.prod(shape) for shape in kinds.shapes(net, config.input_shape)[1:])
    return params, neurons


def memory_estimate(config: Config) -> int:
    """A lower bound on the bytes of the arrays training holds at once, from the sizes,
    the dtype and the number of runs: per run the params, their gradient and update,
    the optimizer's state, a rule's B, a mini-batch's activations and error terms (dp:
    the padded Poisson batch's), and
    the activations of the training set that each epoch is measured on (at once for
    several runs, 10,000 examples at a time for one)."""
    itemsize = jnp.dtype(config.dtype).itemsize
    params, units = _layered_counts(config)
    per_run = params * (3 + _SLOTS.get(config.optimizer, 0))
    per_run += params if config.rule != "bp" else 0
    n_train = TRAIN_EXAMPLES.get(config.dataset, 0) * (5 if config.expand else 1)
    batch = min(config.batch_size, n_train)  # a larger batch is the set
    if config.dp and n_train and batch >= 1:  # a Poisson batch is padded to its max_batch
        from functional_bp import privacy

        batch = privacy.default_max_batch(n_train, batch / n_train)
    per_run += 3 * batch * units
    # One run measures the sets in batches of 10,000 (diagnostics.evaluate); several at once.
    per_run += 2 * (n_train if len(config.runs) > 1 else min(n_train, 10_000)) * units
    if config.track or config.rule != "bp":
        per_run += 2 * min(config.track_examples, n_train) * units
    return itemsize * len(config.runs) * per_run


def memory_limit() -> int:
    """Half the memory of the first device (its ``bytes_limit``, as on a GPU), or of the
    machine (CPU): room left for the data, XLA's temporaries and everything else."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 (a backend without memory statistics)
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound
        return 2**63


def _memory(config: Config) -> None:
    need, limit = memory_estimate(config), memory_limit()
    _require(
        need <= limit,
        f"{len(config.runs)} run{'s' if len(config.runs) > 1 else ''} of "
        + (
            f"layers {config.layers}"
            if config.layers
            else f"sizes {','.join(map(str, config.layer_sizes))}"
        )
        + f" would need at least {need / 2**30:.1f} GiB "
        f"(params, optimizer state, a mini-batch and the measured activations, "
        f"{jnp.dtype(config.dtype).name}), more than the {limit / 2**30:.1f} GiB allowed (half "
        "of this machine's or device's memory): give fewer seeds or learning rates (--seeds, "
        "--learning-rate), smaller sizes (--sizes) or a smaller batch_size (--batch-size)",
    )


def check(
    config: Config, given: Optional[Mapping[str, str]] = None, *, processes: Optional[int] = None
) -> None:
    """Refuses, with the reason, a config that cannot train, before any data is loaded.

    Args:
      config: the `Config`.
      given: the fields the user set, each with the name to report it by (the command
        line's option); None: the fields that differ from their default, except
        track_examples (a base config may set it for the runs that track). Each that
        `MEANINGFUL` says this config would ignore is refused.
      processes: the number of processes that will train it, for the check before they
        start (`jax.distributed.initialize` not called yet, so that a process started
        alone hears at once what several cannot train): what needs their devices (the
        memory estimate, a batch that divides across them) is left to the check after
        the start, which touches no device before. None: `jax.process_count()`, the
        processes that have started.

    Raises:
      ValueError: unknown names, out-of-range numbers, sizes that do not fit the data
        set, a cost the output activation cannot feed, a combination that has no
        meaning, an option the config would ignore, or more runs than memory holds
        (each named in the message).
    """
    _one_of(config.dataset, "dataset", DATASETS)
    _one_of(config.eval_on, "eval_on", ("test", "validation"))
    _one_of(config.initialisation, "init", INITS)
    _one_of(config.optimizer, "optimizer", OPTIMIZERS)
    _one_of(config.rule, "rule", RULES)
    for name in config.track:
        _one_of(name, "track", TRACKS)
    _numbers(config)
    before_start = processes is not None
    if not before_start:
        processes = jax.process_count()
    _require(
        isinstance(processes, int) and processes >= 1,
        f"Expected processes >= 1, got {processes!r}",
    )
    net = config.net  # builds the Network: an incompatible cost or layer raises here
    if config.layers is not None:
        _layered(config, net, processes)
    else:
        sizes, n_in = config.layer_sizes, DATASETS[config.dataset]
        _require(
            len(sizes) >= 2 and min(sizes) >= 1 and sizes[0] == n_in and sizes[-1] == NUM_CLASSES,
            f"sizes {','.join(map(str, sizes))} does not fit {config.dataset}: it needs "
            f"{n_in} inputs and {NUM_CLASSES} outputs",
        )
    _require(
        config.eval_on == "test" or config.dataset == "mnist",
        f"{config.dataset} has no validation set: eval_on validation is for mnist",
    )
    _require(
        not (config.lmbda and config.weight_decay),
        "lmbda and weight_decay are one L2 decay in two forms (weight_decay = lmbda / n): give one",
    )
    _require(
        not (config.rule != "bp" and config.optimizer == "diag_ggn"),
        f"optimizer diag_ggn cannot train rule {config.rule}: it divides by the Gauss-Newton "
        "diagonal of the network's own params, and a rule's update is not their gradient "
        "(use sgd, momentum, adam, ... with a rule)",
    )
    _require(
        config.feedback_scale is None or config.feedback_scale > 0,
        f"Expected feedback_scale > 0, got {config.feedback_scale}",
    )
    _require(
        "noise-scale" not in config.track or config.track_examples >= 2,
        "the noise scale is a variance over examples: track_examples must be >= 2",
    )
    _require(
        not config.float64 or jax.config.jax_enable_x64,
        'float64 needs jax.config.update("jax_enable_x64", True) first',
    )
    _ignored(config, given)
    if config.dp:
        _private(config)
    if processes > 1:
        _processes(config)
    if not before_start:  # the devices (their memory and number): once started
        _memory(config)
        if processes > 1:
            _divisible(config)


def _finite_positive(value, name: str, option: str) -> None:
    _require(
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0,
        f"Expected {name} ({option}) finite and > 0, got {value!r}",
    )


def _private(config: Config) -> None:
    """DP-SGD (dp): a clip norm, one of noise_multiplier and target_epsilon, delta in
    (0, 1), an expected batch no larger than the training set, the gradient of the
    network's own params (rule bp) and an optax optimizer."""
    _require(
        config.clip is not None,
        "dp needs clip (--clip): the norm C each example's gradient is clipped to",
    )
    _finite_positive(config.clip, "clip", "--clip")
    given = [
        option
        for option, value in (
            ("--noise-multiplier", config.noise_multiplier),
            ("--target-epsilon", config.target_epsilon),
        )
        if value is not None
    ]
    _require(
        len(given) == 1,
        "dp needs exactly one of noise_multiplier (--noise-multiplier: sigma itself) and "
        "target_epsilon (--target-epsilon: the smallest sigma that spends it over the run), "
        + ("got both" if given else "got neither"),
    )
    if config.noise_multiplier is not None:
        _finite_positive(config.noise_multiplier, "noise_multiplier", "--noise-multiplier")
    else:
        _finite_positive(config.target_epsilon, "target_epsilon", "--target-epsilon")
    _require(
        isinstance(config.delta, (int, float, np.floating))
        and not isinstance(config.delta, bool)
        and 0 < config.delta < 1,
        f"Expected delta (--delta) in (0, 1), got {config.delta!r}",
    )
    _one_of(config.accountant, "accountant (--accountant)", ACCOUNTANTS)
    _require(
        config.rule == "bp",
        f"dp clips and noises each example's gradient of the network's own params; rule "
        f"{config.rule}'s update is not that gradient (--rule bp with --dp)",
    )
    _require(
        config.optimizer != "diag_ggn",
        "dp cannot train with optimizer diag_ggn (--optimizer): its curvature is measured "
        "on the batch without clipping or noise, which would leak it; use sgd, momentum, "
        "adam, ...",
    )
    n_train = TRAIN_EXAMPLES[config.dataset]
    _require(
        config.batch_size <= n_train,
        f"dp samples each example with probability q = batch_size / n = {config.batch_size} "
        f"/ {n_train} > 1 for {config.dataset}: give a --batch-size (the expected batch) of "
        f"at most {n_train}",
    )


def privacy_warnings(config: Config) -> list[str]:
    """What is allowed but weak about a dp config: delta >= 1/n, which a mechanism that
    publishes one example outright meets."""
    if not config.dp:
        return []
    n_train = TRAIN_EXAMPLES.get(config.dataset, 0)
    if n_train and config.delta >= 1 / n_train:
        return [
            f"delta {config.delta:g} (--delta) is not below 1/n = 1/{n_train} = "
            f"{1 / n_train:.2g}: (epsilon, delta)-DP then allows publishing some examples "
            "outright; give a delta well below 1/n"
        ]
    return []


class Privacy(NamedTuple):
    """What a dp config trains with, on a training set of ``num_examples``.

    Attributes:
      clip: the clipping norm C.
      noise_multiplier: sigma (given, or picked for target_epsilon).
      delta: the delta.
      accountant: "rdp" or "pld".
      sample_rate: q = batch_size / num_examples.
      steps_per_epoch: round(1 / q).
      max_batch: the padded batch a Poisson sample fills (`privacy.default_max_batch`).
      epsilon: the epsilon after all the config's epochs.
    """

    clip: float
    noise_multiplier: float
    delta: float
    accountant: str
    sample_rate: float
    steps_per_epoch: int
    max_batch: int
    epsilon: float

    def epsilon_after(self, epochs: int) -> float:
        """The epsilon spent after ``epochs`` epochs."""
        from functional_bp import privacy

        steps = epochs * self.steps_per_epoch
        return privacy.epsilon(
            self.noise_multiplier, self.sample_rate, steps, self.delta, accountant=self.accountant
        )

    def as_dict(self) -> dict:
        return self._asdict()


@functools.lru_cache(maxsize=32)
def privacy_setting(config: Config, num_examples: Optional[int] = None) -> Privacy:
    """The `Privacy` of a dp config on ``num_examples`` training examples (None: the data
    set's), sigma picked by the accountant for target_epsilon. Needs dp-accounting
    (the privacy extra)."""
    from functional_bp import privacy

    n = TRAIN_EXAMPLES[config.dataset] if num_examples is None else num_examples
    q = config.batch_size / n
    steps_per_epoch = privacy.steps_per_epoch(q)
    steps = config.epochs * steps_per_epoch
    if config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        sigma = _calibrated(config, q, n, steps_per_epoch)
    epsilon = privacy.epsilon(sigma, q, steps, config.delta, accountant=config.accountant)
    return Privacy(
        clip=float(config.clip),
        noise_multiplier=sigma,
        delta=float(config.delta),
        accountant=config.accountant,
        sample_rate=q,
        steps_per_epoch=steps_per_epoch,
        max_batch=privacy.default_max_batch(n, q),
        epsilon=float(epsilon),
    )


def _calibrated(config: Config, q: float, n: int, steps_per_epoch: int) -> float:
    """`privacy.noise_multiplier` for target_epsilon over the whole run; a target no
    sigma reaches (`privacy.UnreachableTarget`) is a `ValueError` naming target_epsilon
    (--target-epsilon) and what it was asked at: the sample rate, the steps and delta."""
    from functional_bp import privacy

    steps = config.epochs * steps_per_epoch
    try:
        return float(
            privacy.noise_multiplier(
                config.target_epsilon, q, steps, config.delta, accountant=config.accountant
            )
        )
    except privacy.UnreachableTarget as error:
        raise ValueError(
            f"target_epsilon (--target-epsilon) {config.target_epsilon:g} cannot be reached: "
            f"the {config.accountant} accountant finds no noise multiplier (up to "
            f"dp-accounting's search limit) that spends at most epsilon "
            f"{config.target_epsilon:g} at sample rate q = {q:.4g} (--batch-size "
            f"{config.batch_size} of {n} examples), {steps} steps (--epochs {config.epochs} "
            f"x {steps_per_epoch} per epoch) and delta {config.delta:g} (--delta); give a "
            "larger --target-epsilon, fewer --epochs or a smaller --batch-size"
        ) from error


def _processes(config: Config) -> None:
    """Several processes (jax.distributed) train one run of data-parallel SGD, of dense
    layers (`_layered`), not dp."""
    _require(
        not config.dp,
        "several processes cannot train dp (--dp): each Poisson-sampled step is one "
        "device's program here; train private runs in one process",
    )
    _require(
        config.optimizer == "sgd" and config.rule == "bp",
        f"several processes train with optimizer sgd and rule bp only (data-parallel SGD), "
        f"not optimizer {config.optimizer} with rule {config.rule} (--optimizer, --rule)",
    )
    _require(
        len(config.runs) == 1,
        f"several processes train one run, not {len(config.runs)}: give one seed and one "
        "learning rate (--seeds, --learning-rate)",
    )


def _divisible(config: Config) -> None:
    """Several processes, started: the mini-batch divides across their devices."""
    devices = jax.device_count()
    _require(
        config.batch_size % devices == 0,
        f"a mini-batch of {config.batch_size} does not divide across the {devices} devices "
        "of the processes",
    )


def optimizer(
    config: Config, learning_rate, weight_decay: Optional[float] = None
) -> optax.GradientTransformation:
    """The config's optimizer with the learning rate in its state
    (`optax.inject_hyperparams`), so that the runs of one program can each have their
    own; with ``weight_decay`` (`Config.weight_decays`), `optax.add_decayed_weights` on
    the weights goes before it, as in `training.sgd`.

    Make it once per training job: `training.epoch` compiles once per optimizer object.
    """
    if config.optimizer == "diag_ggn":
        # Damping and decay are checked in Python: static, not in the state.
        factory = optax.inject_hyperparams(
            curvature.diag_ggn_descent, static_args=("damping", "decay")
        )
        update = factory(
            learning_rate=learning_rate, damping=config.damping, decay=config.ggn_decay
        )
    else:
        update = optax.inject_hyperparams(_OPTAX[config.optimizer])(learning_rate=learning_rate)
    if weight_decay:
        decay = optax.add_decayed_weights(weight_decay, mask=training.weights_only)
        update = optax.chain(decay, update)
    if config.optimizer == "diag_ggn":  # so that the step passes it diag_ggn=
        return curvature.CurvatureTransformation(*update)
    return update


class Data(NamedTuple):
    """The training and evaluation sets as the library takes them."""

    xs: jax.Array
    ys: jax.Array
    labels: np.ndarray
    eval_xs: jax.Array
    eval_ys: jax.Array
    eval_labels: np.ndarray
    eval_name: str


def load(config: Config) -> Data:
    """The config's data set in its dtype, targets one-hot; images (N, C, H, W) for a
    network that starts with a convolution or pooling; with ``expand``, the training
    set and its one-pixel shifts."""
    if config.dataset == "digits":
        train, evaluation = data.load_digits()
        name = "test"
    else:
        train, validation, test = data.load_mnist(config.data_dir, download=config.download)
        name = config.eval_on
        evaluation = validation if name == "validation" else test
    if config.expand:
        train = data.expand_shifts(train, IMAGE_SHAPES[config.dataset][1:])
    shape = config.input_shape  # images (C, H, W) for convolution and pooling
    xs, ys = (jnp.asarray(a, config.dtype) for a in (train.x, data.one_hot(train.y)))
    eval_xs, eval_ys = (
        jnp.asarray(a, config.dtype) for a in (evaluation.x, data.one_hot(evaluation.y))
    )
    xs, eval_xs = (a.reshape(a.shape[0], *shape) for a in (xs, eval_xs))
    return Data(xs, ys, train.y, eval_xs, eval_ys, evaluation.y, name)


def check_outputs(**paths: Optional[str]) -> None:
    """Before any work: every output path given can be written and no two name the same
    file (`plots.figure_format` checks a figure's suffix).

    Raises:
      ValueError: naming the option and the reason.
    """
    given = {option: path for option, path in paths.items() if path is not None}
    for option, path in given.items():
        try:
            check_writable(path, f"--{option}")
        except OSError as error:
            raise ValueError(str(error)) from None
    resolved = [Path(path).resolve() for path in given.values()]
    _require(len(set(resolved)) == len(resolved), f"two outputs name the same file: {given}")
