"""Training a `Config`: one run, or every (seed, learning rate) in one program.

Every run trains through the one composition of `functional_bp.training`:
`training.epoch` (gradient x optimizer x loop), and for several runs `training.many`
over it, each run with its own key, params and optimizer state (its learning rate in
the state) and the data set shared. Several processes train one run with
`parallel.data_parallel_epoch`. A private config (dp) trains each epoch with
`privacy.poisson_epoch` (Poisson-sampled steps of `per_example.PrivateGradient`) and
records the epsilon spent after every epoch.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import time
from collections.abc import Callable, Iterator
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from functional_bp import core, diagnostics, feedback, parallel, per_example, statistics, training
from functional_bp.gradients import loss
from functional_bp.layers import init_network
from functional_bp.params import Layer, init_mlp
from functional_bp.runs.config import Config, Data, Privacy, check, optimizer, privacy_setting
from functional_bp.runs.records import Epoch, Interrupted, Result, summary, sweep_summary

__all__ = ["FEEDBACK_SEED_OFFSET", "out_of_memory", "train"]

FEEDBACK_SEED_OFFSET = 10**6
"""A rule's B comes from ``jax.random.key(seed + FEEDBACK_SEED_OFFSET)``: its own key, so
that every rule starts from the initial weights backprop starts from."""

_STATIC = ("optimizer", "batch_size", "net")
# One program for every run: own shuffles, or one shuffle shared by all.
_EPOCHS = jax.jit(
    training.many(training.epoch, ["key", "params", "opt_state"]), static_argnames=_STATIC
)
_SHARED_EPOCHS = jax.jit(
    training.many(training.epoch, ["params", "opt_state"]), static_argnames=_STATIC
)


_PRIVATE_STATIC = ("optimizer", "sample_rate", "max_batch", "net")


@functools.cache
def _private_epochs(shared: bool) -> Callable:
    """`privacy.poisson_epoch` for several runs in one program: each run its own key
    (its own Poisson samples and noise), or the first run's for all (``shared``)."""
    from functional_bp import privacy

    per_run = ["params", "opt_state"] if shared else ["key", "params", "opt_state"]
    return jax.jit(training.many(privacy.poisson_epoch, per_run), static_argnames=_PRIVATE_STATIC)


@contextlib.contextmanager
def out_of_memory(what: str) -> Iterator[None]:
    """Turns running out of memory (Python's `MemoryError`, or XLA's RESOURCE_EXHAUSTED
    as a ``JaxRuntimeError``) into an `OSError` (ENOMEM) that says what ran out and what
    to make smaller, instead of a traceback."""
    advice = f"{what} ran out of memory; give smaller sizes, fewer runs or a smaller batch"
    try:
        yield
    except MemoryError:
        raise OSError(errno.ENOMEM, advice) from None
    except jax.errors.JaxRuntimeError as error:
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise OSError(errno.ENOMEM, f"{advice} ({first})") from None


def _lift(fn: Callable, per_run: list[str], many: bool) -> Callable:
    """``fn`` itself for one run, `training.many` of it for several."""
    return training.many(fn, per_run) if many else fn


def _split(keys, many: bool):
    """(keys to keep, keys to use now): ``jax.random.split`` of each run's key."""
    if many:
        return tuple(jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0))
    return tuple(jax.random.split(keys))


def _network(config: Config, state):
    """(params, feedback) of the trained state."""
    return (state.params, state.feedback) if config.rule != "bp" else (state, None)


def _initial_state(config: Config, many: bool):
    """(shuffle keys, params or `feedback.FeedbackParams`): each run's keys from its seed
    as ``init_key, key = jax.random.split(jax.random.key(seed))``."""
    seeds = [seed for seed, _ in config.runs]
    if many:
        init_keys, keys = _split(jnp.stack([jax.random.key(s) for s in seeds]), True)
    else:
        init_keys, keys = _split(jax.random.key(seeds[0]), False)
    if config.layers is None:
        init = _lift(init_mlp, ["key"], many)
        params = init(init_keys, config.layer_sizes, init=config.initialisation, dtype=config.dtype)
    else:
        net, shape = config.net, config.input_shape

        def init(key):
            return init_network(key, net, shape, init=config.initialisation, dtype=config.dtype)

        params = _lift(init, ["key"], many)(init_keys)
    if config.rule == "bp":
        return keys, params
    feedback_keys = [jax.random.key(s + FEEDBACK_SEED_OFFSET) for s in seeds]
    feedback_keys = jnp.stack(feedback_keys) if many else feedback_keys[0]
    init_feedback = _lift(feedback.init_feedback, ["key", "params"], many)
    matrices = init_feedback(
        feedback_keys,
        params,
        config.rule,
        scale=config.feedback_scale,
        net=config.net,
        input_shape=config.input_shape,
    )
    return keys, feedback.FeedbackParams(params, matrices)


def _tracked(config: Config, state, xs, ys, many: bool) -> dict:
    """What is tracked, as numpy arrays (a leading run axis for several runs)."""
    net, (params, matrices) = config.net, _network(config, state)
    out = {}
    if config.rule != "bp":
        per_run = ["params"] + (["feedback"] if matrices is not None else [])
        # brsf redraws B's magnitudes every step: its angles are measured with one draw.
        angles = _lift(feedback.alignment_angles, per_run, many)(
            params, matrices, xs, ys, rule=config.rule, net=net, key=jax.random.key(0)
        )
        out.update(update_angles=angles.update, feedback_angles=angles.feedback)
    if "noise-scale" in config.track:
        noise = _lift(statistics.gradient_noise_scale, ["params"], many)(
            params,
            xs,
            ys,
            net=net,
            key=jax.random.key(0),  # one draw of any dropout masks
        )
        out.update(
            noise_scale=noise.b_simple,
            noise_trace=noise.trace,
            noise_grad_norm_sq=noise.grad_norm_sq,
        )
    if "layer-norms" in config.track:
        norms = _lift(diagnostics.layer_gradient_norms, ["params"], many)(params, xs, ys, net=net)
        out.update(delta_norms=norms.delta, weight_grad_norms=norms.weight_grad)
    return jax.device_get(out)


def _per_run(values: dict, runs: int, many: bool) -> list[dict]:
    """One dict of Python numbers and lists per run."""
    if not many:
        return [{k: np.asarray(v).tolist() for k, v in values.items()}]
    return [{k: np.asarray(v)[r].tolist() for k, v in values.items()} for r in range(runs)]


def _measure_one(config: Config, data: Data, params) -> dict:
    """network.py's ``evaluate`` and network2.py's ``total_cost``, with lmbda's L2 term
    lmbda / (2n) sum w^2 for the n examples of each set."""
    net, n_eval = config.net, data.eval_xs.shape[0]
    train_l2, eval_l2 = config.lmbda / data.xs.shape[0], config.lmbda / n_eval
    correct = diagnostics.evaluate(params, data.eval_xs, data.eval_labels, net=net)
    return dict(
        train_cost=diagnostics.total_cost(params, data.xs, data.ys, weight_decay=train_l2, net=net),
        train_accuracy=diagnostics.accuracy(params, data.xs, data.labels, net=net),
        eval_cost=diagnostics.total_cost(
            params, data.eval_xs, data.eval_ys, weight_decay=eval_l2, net=net
        ),
        eval_accuracy=correct / n_eval,
    )


@functools.partial(jax.jit, static_argnames="net")
def _metrics_many(params, xs, ys, labels, l2, *, net):
    """Every run's count of correct examples and total cost on one set."""
    correct = training.many(diagnostics.correct, ["params"])(params, xs, labels, net=net)
    cost = training.many(loss, ["params"])(params, xs, ys, net=net)
    return correct, cost + training.many(diagnostics.l2_term, ["params"])(params, l2)


def _measure_many(config: Config, data: Data, params) -> list[dict]:
    """`_measure_one` for every run at once: `training.many` of the jitted metrics."""
    sets = {
        "train": (data.xs, data.ys, data.labels),
        "eval": (data.eval_xs, data.eval_ys, data.eval_labels),
    }
    rows = [{} for _ in config.runs]
    for name, (xs, ys, labels) in sets.items():
        l2 = config.lmbda / xs.shape[0]
        correct, cost = jax.device_get(
            _metrics_many(params, xs, ys, jnp.asarray(labels), l2, net=config.net)
        )
        for r, row in enumerate(rows):
            row.update(
                {f"{name}_cost": float(cost[r]), f"{name}_accuracy": int(correct[r]) / len(xs)}
            )
    return rows


@functools.lru_cache(maxsize=64)
def _update(name: str, damping: float, ggn_decay: float, weight_decay: Optional[float]):
    """One optimizer object per setting, so that runs of the same shapes compile their
    epoch once (`training.epoch` takes the optimizer as a static argument). Its update
    reads the learning rate from the state; the 1.0 here is never used."""
    config = Config(optimizer=name, damping=damping, ggn_decay=ggn_decay)
    return optimizer(config, 1.0, weight_decay)


def _epoch_function(config: Config, data: Data, many: bool):
    """``epoch(key, state, opt_state) -> (state, opt_state)`` and the initial opt_state
    of the state it is given."""
    net, n = config.net, data.xs.shape[0]
    decay = config.weight_decays(n)
    lrs = [lr for _, lr in config.runs]
    update = _update(config.optimizer, config.damping, config.ggn_decay, decay)
    if config.rule == "bp":
        gradient = core.MeanGradient()
    else:
        gradient = feedback.RuleGradient(config.rule, decay or 0.0)
    common = dict(batch_size=config.batch_size, gradient=gradient, net=net)
    setting = privacy_setting(config, n) if config.dp else None

    def init(state):
        if not many:
            return optimizer(config, lrs[0], decay).init(state)
        # Each run's own learning rate, in its optimizer state.
        one = lambda params, learning_rate: optimizer(config, learning_rate, decay).init(params)
        lr_array = jnp.asarray(lrs, config.dtype)
        return training.many(one, ["params", "learning_rate"])(state, lr_array)

    if jax.process_count() > 1:  # one run of data-parallel SGD: each process its part
        mesh = parallel.data_mesh()
        host_xs, host_ys = np.asarray(data.xs), np.asarray(data.ys)

        def epoch(key, params, opt_state):
            params = parallel.data_parallel_epoch(
                key,
                mesh,
                params,
                host_xs,
                host_ys,
                lrs[0],
                weight_decay=decay,
                batch_size=config.batch_size,
                net=net,
            )
            return [Layer(*(a.addressable_data(0) for a in layer)) for layer in params], opt_state

    elif setting is not None:
        epoch = _private_epoch(setting, update, data, net, many, config.shared_shuffle)

    elif not many:

        def epoch(key, state, opt_state):
            return training.epoch(key, update, state, opt_state, data.xs, data.ys, **common)

    else:

        def epoch(keys, state, opt_state):
            if config.shared_shuffle:  # the first run's order for all
                return _SHARED_EPOCHS(keys[0], update, state, opt_state, data.xs, data.ys, **common)
            return _EPOCHS(keys, update, state, opt_state, data.xs, data.ys, **common)

    return epoch, init


def _private_epoch(setting: Privacy, update, data: Data, net, many: bool, shared: bool):
    """An epoch of `privacy.poisson_epoch`: round(1/q) Poisson-sampled steps of DP-SGD,
    each step's gradient divided by the expected batch q n."""
    from functional_bp import privacy

    n = data.xs.shape[0]
    gradient = per_example.PrivateGradient(
        setting.clip, setting.noise_multiplier, expected_batch_size=setting.sample_rate * n
    )
    options = dict(
        sample_rate=setting.sample_rate, gradient=gradient, max_batch=setting.max_batch, net=net
    )
    if not many:

        def epoch(key, state, opt_state):
            return privacy.poisson_epoch(key, update, state, opt_state, data.xs, data.ys, **options)

    else:

        def epoch(keys, state, opt_state):
            key = keys[0] if shared else keys
            return _private_epochs(shared)(
                key, update, state, opt_state, data.xs, data.ys, **options
            )

    return epoch


def train(
    config: Config, data: Data, *, on_epoch: Optional[Callable[[Epoch], None]] = None
) -> Result:
    """Trains every run of ``config`` on ``data``; returns the `Result`.

    Runs `check` first. After every epoch, each run's row (module `records`) is
    measured and ``on_epoch(Epoch(...))`` is called: progress reports go through it, so
    this function prints nothing. A private config (dp) adds each epoch's ``epsilon``
    (spent so far, the same for every run) to the rows and its `Privacy` to the record
    as ``privacy``. A run whose cost or params stop being finite (or
    exceed 1e6) is marked diverged with the reason: one run stops there; of several,
    the others go on (the diverged one's values are NaN from then on).

    Raises:
      ValueError: the config cannot train (`check`).
      Interrupted: Ctrl-C; its ``result`` holds the epochs that finished.
    """
    check(config)
    with out_of_memory("training"):
        return _train(config, data, on_epoch)


def _train(config: Config, data: Data, on_epoch: Optional[Callable[[Epoch], None]]) -> Result:
    many = len(config.runs) > 1
    setting = privacy_setting(config, data.xs.shape[0]) if config.dp else None
    epoch_fn, init = _epoch_function(config, data, many)
    keys, state = _initial_state(config, many)
    opt_state = init(state)
    track_xs, track_ys = data.xs[: config.track_examples], data.ys[: config.track_examples]
    tracking = config.rule != "bp" or bool(config.track)
    initial = None
    if tracking:
        initial = _per_run(
            _tracked(config, state, track_xs, track_ys, many), len(config.runs), many
        )
    histories = [[] for _ in config.runs]
    diverged: dict[int, str] = {}

    def result() -> Result:
        params, matrices = _network(config, state)
        record = _record(config, data, histories, diverged, initial, many)
        if setting is not None:
            record = {**record, "privacy": setting.as_dict()}
        return Result(record, params, matrices)

    try:
        for epoch in range(1, config.epochs + 1):
            keys, epoch_keys = _split(keys, many)
            start = time.perf_counter()
            new = epoch_fn(epoch_keys, state, opt_state)
            jax.block_until_ready(new)
            state, opt_state = new  # only a finished epoch is kept
            seconds = time.perf_counter() - start
            params = _network(config, state)[0]
            rows = (
                _measure_many(config, data, params)
                if many
                else [_measure_one(config, data, params)]
            )
            if tracking:
                extra = _per_run(_tracked(config, state, track_xs, track_ys, many), len(rows), many)
                rows = [{**row, **more} for row, more in zip(rows, extra)]
            rows = [{"epoch": epoch, "train_seconds": seconds, **row} for row in rows]
            if setting is not None:
                epsilon = setting.epsilon_after(epoch)
                rows = [{**row, "epsilon": epsilon} for row in rows]
            for history, row in zip(histories, rows):
                history.append(row)
            _check_divergence(params, rows, diverged, epoch, many)
            if on_epoch is not None:
                on_epoch(Epoch(epoch, seconds, rows, dict(diverged)))
            if len(diverged) == len(rows):
                break
    except KeyboardInterrupt as error:
        raise Interrupted(result()) from error
    return result()


def _check_divergence(params, rows: list[dict], diverged: dict, epoch: int, many: bool) -> None:
    """Marks each run that has newly diverged, with the reason."""
    for r, row in enumerate(rows):
        if r in diverged:
            continue
        run_params = jax.tree.map(lambda a, r=r: a[r], params) if many else params
        try:
            diagnostics.check_divergence(run_params, row["train_cost"], epoch=epoch)
        except diagnostics.TrainingDiverged as error:
            diverged[r] = f"{error}; try a smaller learning rate"


def _record(config: Config, data: Data, histories, diverged, initial, many: bool) -> dict:
    """The record (module `records`) of the epochs so far."""
    runs = []
    for r, (seed, lr) in enumerate(config.runs):
        run = dict(seed=seed, learning_rate=lr, diverged=diverged.get(r), history=histories[r])
        if initial is not None:
            run["initial"] = initial[r]
        runs.append({**run, **summary(histories[r])})
    head = {"config": config.as_dict(), "eval_set": data.eval_name}
    if not many:
        return {**head, **runs[0]}
    return {**head, "runs": runs, "summary": sweep_summary(runs, config.learning_rates)}
