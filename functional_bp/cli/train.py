"""``functional_bp train``: train on digits or MNIST with the hand-written gradients; one
run, or every seed and learning rate at once in one program."""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple, Optional

import jax
import numpy as np

from functional_bp import plots, runs
from functional_bp.cli import common, interrupts

DESCRIPTION = """Train on digits or MNIST with the hand-written gradients (functional_bp.runs).
Several --seeds or --learning-rate values train every (seed, learning rate) in one
program and report each learning rate's mean +- std. Every combination of --rule,
--optimizer, several runs and --track trains, except --optimizer diag_ggn with a --rule
(its curvature is of the network's own params); several processes train --optimizer sgd
--rule bp alone. What cannot train is refused before any data is loaded (exit 2), and so
is an option the job would ignore (--damping without diag_ggn, --feedback-scale without
fa, dfa or kp, --shared-shuffle with one run, --clip without --dp, ...). --dp trains
with DP-SGD: Poisson sampling at q = --batch-size / n (the expected batch), each
example's gradient clipped to --clip, Gaussian noise of std sigma * clip, sigma given
(--noise-multiplier) or picked for the whole run (--target-epsilon); the epsilon spent is
printed and recorded after every epoch. Ctrl-C writes the history of the finished epochs
(none finished: an earlier --json stays; --save is not written) and exits 130; SIGTERM
(a scheduler's time limit) does the same and exits 143. With several processes, what
they cannot train is refused before any of them starts."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train with the hand-written gradients", description=DESCRIPTION
    )
    common.add_data_options(parser)
    parser.add_argument(
        "--eval-on",
        choices=["test", "validation"],
        default="test",
        help="MNIST: evaluate on the test or the validation set",
    )
    common.add_network_options(parser, None, layers=True)
    parser.add_argument(
        "--layers",
        default=None,
        metavar="SPEC",
        help="layer types instead of --sizes, comma-separated: convFxK (F filters KxK; "
        "convFxKsSpP: stride S, P zeros around), poolS (max), avgpoolS, denseN, dropoutR; "
        'a Flatten and the 10 outputs are added: "conv20x5,pool2,conv40x5,pool2,dense100" is '
        "network3.py's two convolutional-pooling layers. The options not given take "
        "network3.py's values: --output-activation softmax --cost log_likelihood --init "
        "scaled_normal --eta 0.1",
    )
    parser.add_argument(
        "--dropout",
        type=common.unit_interval,
        default=None,
        metavar="RATE",
        help="with --layers: dropout at RATE on the input of every dense layer (network3.py's "
        "p_dropout)",
    )
    parser.add_argument(
        "--expand",
        action="store_true",
        help="train on the training set and its four one-pixel shifts (network3.py's "
        "expand_mnist.py: 5x the examples)",
    )
    parser.set_defaults(seed=None)  # not given: seed 0, and --seeds may replace it
    parser.set_defaults(cost=None)  # not given: quadratic, or network3.py's with --layers
    parser.add_argument("--epochs", type=common.count, default=30)
    parser.add_argument("--batch-size", type=common.count, default=10)
    parser.add_argument(
        "--learning-rate",
        "--eta",
        type=common.learning_rates,
        default=None,
        help="learning rate eta, or a list (0.5,1,3): every (seed, eta) trains in one program "
        "(default 3, network.py's; 0.1, network3.py's, with --layers)",
    )
    parser.add_argument(
        "--seeds",
        type=common.seeds,
        default=None,
        help="several seeds (0-7 or 0,3,5), trained at once in one program; default --seed",
    )
    parser.add_argument(
        "--shared-shuffle",
        action="store_true",
        help="with several runs: one mini-batch order for all (faster; seeds then vary "
        "the initial weights only)",
    )
    from functional_bp.cli import cluster  # its options, checks and bounded start-up

    cluster.add_arguments(
        parser.add_argument_group(
            "several processes (jax.distributed): data-parallel SGD of one run, process 0 "
            "writes; each waits at most --init-timeout for the others"
        )
    )
    parser.add_argument(
        "--lmbda",
        type=common.non_negative,
        default=0.0,
        help="network2.py's L2 lambda: weight decay lmbda/n (n: training examples), and "
        "lmbda/(2n) sum w^2 in the reported costs; any optimizer",
    )
    parser.add_argument(
        "--weight-decay",
        type=common.non_negative,
        default=0.0,
        help="the per-step decay wd, w <- w - eta (g + wd w), not in the reported costs; "
        "under --rule kp also the decay of B. Not with --lmbda",
    )
    parser.add_argument("--optimizer", choices=list(runs.OPTIMIZERS), default="sgd")
    parser.add_argument(
        "--damping",
        type=common.positive,
        default=None,
        help="diag_ggn: added to the curvature (default 0.1)",
    )
    parser.add_argument(
        "--ggn-decay",
        type=common.unit_interval,
        default=None,
        help="diag_ggn: decay of the curvature's running average, in [0, 1) (default 0.9)",
    )
    parser.add_argument(
        "--rule",
        choices=list(runs.RULES),
        default="bp",
        help="the backward pass: backprop, feedback alignment, direct feedback alignment, "
        "sign symmetry or Kolen-Pollack (records the alignment angles per epoch)",
    )
    parser.add_argument(
        "--feedback-scale",
        type=common.positive,
        default=None,
        help="fa, dfa, kp, frsf: the std of the random B (default 1/sqrt(n_l))",
    )
    parser.add_argument(
        "--track",
        choices=list(runs.TRACKS),
        action="append",
        default=[],
        help="also record per epoch (and before training): the gradient noise scale "
        "B_simple (McCandlish et al.), or the per-layer gradient norms; repeatable",
    )
    parser.add_argument(
        "--track-examples",
        type=common.count,
        default=None,
        help="with --track or a --rule: training examples the tracked statistics use "
        "(default 5000)",
    )
    private = parser.add_argument_group(
        "private training (DP-SGD): Poisson sampling at q = --batch-size / n, per-example "
        "clipping and Gaussian noise; any --optimizer but diag_ggn, --rule bp, one process"
    )
    private.add_argument(
        "--dp",
        action="store_true",
        help="train with DP-SGD (needs --clip and one of --noise-multiplier, --target-epsilon)",
    )
    private.add_argument(
        "--clip",
        type=common.positive,
        default=None,
        metavar="C",
        help="--dp: the norm each example's gradient is clipped to",
    )
    private.add_argument(
        "--noise-multiplier",
        type=common.positive,
        default=None,
        metavar="SIGMA",
        help="--dp: the noise's std in units of --clip",
    )
    private.add_argument(
        "--target-epsilon",
        type=common.positive,
        default=None,
        metavar="EPSILON",
        help="--dp: pick the smallest sigma whose run (--epochs x round(n / --batch-size) "
        "steps) spends at most this epsilon",
    )
    private.add_argument(
        "--delta",
        type=common.open_unit_interval,
        default=None,
        help="--dp: the delta of (epsilon, delta)-DP, in (0, 1), well below 1/n (default 1e-5)",
    )
    private.add_argument(
        "--accountant",
        choices=list(runs.ACCOUNTANTS),
        default=None,
        help="--dp: Renyi DP or privacy loss distributions (dp-accounting; default rdp)",
    )
    parser.add_argument(
        "--save",
        default=None,
        help="write the params to this .npz; with several runs one file per run, "
        "NAME-seed{S}-lr{ETA}.npz, except runs that diverged",
    )
    parser.add_argument(
        "--plot", default=None, help="write a figure of cost and accuracy (.png, .pdf, .svg, ...)"
    )
    parser.add_argument("--json", default=None, help="write the per-epoch history as JSON")
    parser.add_argument("--float64", action="store_true", help="train in float64, as network.py")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run, before_start=before_start)


_DEFAULT = runs.Config()
# The options that only some jobs use (the Config's own are in `runs.config.MEANINGFUL`):
# option -> (its attribute, when it is used, why it is not here).
IGNORED_UNLESS = {
    "--seed": (
        "seed",
        lambda args: args.seeds is None,
        lambda args: "--seeds gives the seeds; put this one in --seeds",
    ),
}
# The options that are Config fields of `runs.config.MEANINGFUL`.
CONFIG_OPTIONS = ("data_dir", "download", "shared_shuffle", "damping", "ggn_decay", "dropout")
CONFIG_OPTIONS += ("feedback_scale", "track_examples")
CONFIG_OPTIONS += ("clip", "noise_multiplier", "target_epsilon", "delta", "accountant")


def _given_or_default(args: argparse.Namespace, field: str):
    """The option's value, or the Config's default when it was not given (None)."""
    value = getattr(args, field)
    return getattr(_DEFAULT, field) if value is None else value


# With --layers, the options not given take network3.py's values.
NETWORK3 = dict(output_activation="softmax", cost="log_likelihood", learning_rate=[0.1])
NETWORK = dict(output_activation=None, cost="quadratic", learning_rate=[3.0])


def _network_option(args: argparse.Namespace, name: str):
    """An option as given; else network.py's default, or network3.py's with --layers (its
    cost only with its output activation)."""
    value = getattr(args, name)
    if value is not None:
        return value
    book = NETWORK3 if args.layers is not None else NETWORK
    if name == "cost" and args.output_activation is not None:
        book = NETWORK
    return book[name]


def config_from(args: argparse.Namespace) -> runs.Config:
    """The `runs.Config` the options describe."""
    return runs.Config(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        eval_on=args.eval_on,
        sizes=None if args.sizes is None else tuple(args.sizes),
        layers=args.layers,
        dropout=_given_or_default(args, "dropout"),
        expand=args.expand,
        activation=args.activation,
        output_activation=_network_option(args, "output_activation"),
        cost=_network_option(args, "cost"),
        init=args.init,
        seeds=tuple(args.seeds or [args.seed or 0]),
        learning_rates=tuple(_network_option(args, "learning_rate")),
        epochs=args.epochs,
        batch_size=args.batch_size,
        shared_shuffle=args.shared_shuffle,
        optimizer=args.optimizer,
        lmbda=args.lmbda,
        weight_decay=args.weight_decay,
        damping=_given_or_default(args, "damping"),
        ggn_decay=_given_or_default(args, "ggn_decay"),
        rule=args.rule,
        feedback_scale=args.feedback_scale,
        track=tuple(dict.fromkeys(args.track)),
        track_examples=_given_or_default(args, "track_examples"),
        float64=args.float64,
        dp=args.dp,
        clip=args.clip,
        noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon,
        delta=_given_or_default(args, "delta"),
        accountant=_given_or_default(args, "accountant"),
    )


class Outputs(NamedTuple):
    """Where a training job writes (None: not written)."""

    json: Optional[str] = None
    plot: Optional[str] = None
    save: Optional[str] = None


def _checked(args: argparse.Namespace, processes: Optional[int] = None) -> runs.Config:
    """The config of ``args``, refused (`ValueError` naming the option) if it cannot
    train; ``processes``: `runs.check`'s, before several processes start."""
    common.use_float64(args.float64)
    config = config_from(args)
    common.refuse_ignored(args, IGNORED_UNLESS)
    runs.check(config, common.given(args, CONFIG_OPTIONS), processes=processes)
    if args.save is not None and config.layers is not None and config.rule != "bp":
        raise ValueError(
            f"--save stores a rule's feedback matrices with the params of dense layers only: "
            f"not with --layers and --rule {config.rule}"
        )
    return config


def before_start(args: argparse.Namespace) -> None:
    """Before several processes start (`functional_bp.cli.main`, before `cluster.start`):
    refuses what they cannot train (--layers, --dp, another --optimizer or --rule,
    several runs) and every other option `run` would refuse, so that a process started
    alone says so at once instead of after the others have connected. What needs the
    started devices (memory, a batch that divides across them) waits for `run`."""
    from functional_bp.cli import cluster

    processes = cluster.processes(args)
    if processes is not None:  # --distributed alone: the cluster tells how many, later
        _checked(args, processes)


def run(args: argparse.Namespace) -> int:
    """Checks everything, loads the data, trains, reports and writes."""
    config = _checked(args)
    outputs = Outputs(args.json, args.plot, args.save)
    if config.dp:  # the accountant (dp-accounting) and sigma before any data is loaded
        runs.privacy_setting(config)
        for warning in runs.privacy_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
    if jax.process_index() == 0:  # the one process that writes
        common.check_outputs(**outputs._asdict())
        if args.save is not None and len(config.runs) > 1:  # the longest name of NAME-seed...
            names = (runs.run_path(args.save, seed, lr) for seed, lr in config.runs)
            runs.check_outputs(save=str(max(names, key=lambda path: len(path.name))))
    return train(config, common.load(config), outputs, no_progress=args.no_progress)[0]


def train(
    config: runs.Config, data: runs.Data, outputs: Outputs, *, no_progress: bool = False
) -> tuple[int, Optional[dict]]:
    """Trains with a progress bar, prints the summary, writes the outputs; returns the
    exit status and the record (None if interrupted: 130 by Ctrl-C, 143 by SIGTERM)."""
    many = len(config.runs) > 1
    if jax.process_count() > 1:
        print(f"data-parallel over {jax.process_count()} processes, {jax.device_count()} devices")
    if many:
        print(
            f"{len(config.runs)} runs in one program: seeds {list(config.seeds)} x learning "
            f"rate {list(config.learning_rates)}"
        )
    if config.dp:
        _print_privacy(runs.privacy_setting(config, data.xs.shape[0]), config)
    bar = common.progress_bar(config.epochs, desc="training", disable=no_progress)
    try:
        result = runs.train(config, data, on_epoch=_reporter(config, data, bar))
    except runs.Interrupted as stop:
        bar.close()
        done = len(runs.per_run(stop.result.record)[0]["history"])
        # The finished epochs' history; the params never (an earlier --save stays), and
        # nothing before an epoch has finished (an earlier --json stays).
        written = []
        if done:
            written = _write(config, stop.result, outputs._replace(save=None), announce=False)
        where = f"; history written to {', '.join(written)}" if written else ""
        print(
            f"{interrupts.reason(stop)} after {done} of {config.epochs} epochs{where}",
            file=sys.stderr,
        )
        return interrupts.status(stop), None
    bar.close()
    record = result.record
    if many:
        _print_sweep(record)
    elif record["history"] and not record["diverged"]:
        print(
            f"{config.dataset} {record['eval_set']} accuracy: final "
            f"{record['final_accuracy']:.2%}, peak {record['peak_accuracy']:.2%} (epoch "
            f"{record['peak_epoch']}); training {record['median_train_seconds_per_epoch']:.3f} "
            "s per epoch (median, epochs 2+), first epoch with compilation "
            f"{record['first_epoch_seconds']:.2f} s"
            + (f"; epsilon {record['epsilon']:.3g} (delta {config.delta:g})" if config.dp else "")
        )
    failed = all(run["diverged"] for run in runs.per_run(record))
    # The history first: if the params cannot be written, the run is still on record.
    _write(config, result, outputs if not failed else outputs._replace(save=None))
    if failed:
        reason = "every run diverged; try a smaller learning rate" if many else record["diverged"]
        print(f"error: {reason}", file=sys.stderr)
        return 1, record
    return 0, record


def _print_privacy(setting: runs.Privacy, config: runs.Config) -> None:
    """What a private job trains with and what it will spend."""
    picked = (
        "" if config.noise_multiplier is not None else f" (for epsilon {config.target_epsilon:g})"
    )
    print(
        f"DP-SGD: Poisson sampling q = {setting.sample_rate:.4g} (expected batch "
        f"{config.batch_size}, padded to {setting.max_batch}), {setting.steps_per_epoch} steps "
        f"per epoch, clip {setting.clip:g}, noise multiplier {setting.noise_multiplier:.4g}"
        f"{picked}; epsilon after {config.epochs} epochs {setting.epsilon:.3g} (delta "
        f"{setting.delta:g}, {setting.accountant} accountant)"
    )


def _privacy(row: dict, config: runs.Config) -> str:
    """ ", epsilon 1.23 (delta 1e-05)" of a private job's row, else nothing."""
    if "epsilon" not in row:
        return ""
    return f", epsilon {row['epsilon']:.3g} (delta {config.delta:g})"


def _reporter(config: runs.Config, data: runs.Data, bar):
    """``on_epoch``: network.py's line per epoch (for several runs, the mean and best),
    and each run that diverges, as it does."""
    n_eval, reported = data.eval_xs.shape[0], set()

    def on_epoch(epoch: runs.Epoch) -> None:
        bar.update(1)
        for r in sorted(set(epoch.diverged) - reported):
            reported.add(r)
            if len(epoch.rows) > 1:
                seed, lr = config.runs[r]
                common.write_line(f"run seed {seed} learning rate {lr:g}: {epoch.diverged[r]}")
        alive = [row for r, row in enumerate(epoch.rows) if r not in epoch.diverged]
        if not alive:
            return
        accuracies = [row["eval_accuracy"] for row in alive]
        if len(epoch.rows) == 1:
            correct = round(accuracies[0] * n_eval)
            common.write_line(
                f"Epoch {epoch.epoch - 1}: {correct} / {n_eval}{_privacy(alive[0], config)}"
            )
            bar.set_postfix(acc=f"{accuracies[0]:.4f}", cost=f"{alive[0]['eval_cost']:.4f}")
        else:
            common.write_line(
                f"Epoch {epoch.epoch - 1}: {data.eval_name} accuracy mean "
                f"{np.mean(accuracies):.2%}, best {max(accuracies):.2%} over {len(alive)} "
                f"runs ({epoch.seconds:.2f} s){_privacy(alive[0], config)}"
            )

    return on_epoch


def _print_sweep(record: dict) -> None:
    """Each run, then per learning rate the mean +- std and best accuracies."""
    print(f"{'seed':>5} {'eta':>7} {'final':>8} {'peak':>8} (epoch)")
    for run in record["runs"]:
        note = "  diverged" if run["diverged"] else ""
        print(
            f"{run['seed']:>5} {run['learning_rate']:>7g} {run['final_accuracy']:>8.2%} "
            f"{run['peak_accuracy']:>8.2%} ({run['peak_epoch']}){note}"
        )
    for row in record["summary"]:
        print(
            f"learning rate {row['learning_rate']:g}, {row['runs']} runs: {record['eval_set']} "
            f"accuracy final {row['final_mean']:.2%} ± {row['final_std']:.2%} (best "
            f"{row['final_best']:.2%}), peak mean {row['peak_mean']:.2%} (best "
            f"{row['peak_best']:.2%})"
        )


def _write(
    config: runs.Config, result: runs.Result, outputs: Outputs, *, announce: bool = True
) -> list[str]:
    """Writes what ``outputs`` names (process 0 only); returns the paths written."""
    if jax.process_index() > 0:
        return []
    record, written = result.record, []
    if outputs.json:
        written.append(("history", runs.write_json(outputs.json, record)))
    if outputs.plot and runs.per_run(record)[0]["history"]:
        title = f"{config.dataset} {config.layers or config.layer_sizes}"
        written.append(("plot", plots.training(record, outputs.plot, title=title)))
    if outputs.save:
        written += [("params", path) for path in runs.save_params(outputs.save, result, config)]
    for what, path in written if announce else ():
        print(f"{what} written to {path}")
    return [str(path) for _, path in written]
