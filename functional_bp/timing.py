"""Side-by-side timing: contenders interleaved, medians after warm-up.

The machines this runs on are shared and noisy, so comparisons are ratios of medians
measured in the same run, each contender's calls interleaved with the others'.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["gemm_rate", "interleaved_medians", "machine", "published_command"]


def interleaved_medians(
    contenders: dict[str, Callable[[], object]],
    *,
    repeats: int = 20,
    warmup: int = 2,
    min_time: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each zero-argument function, calls interleaved.

    Each call's result is passed to `jax.block_until_ready`, so asynchronous dispatch
    is not mistaken for speed. ``warmup`` rounds (compilation included) are discarded.
    With ``min_time`` > 0, each timed sample repeats a call until that many seconds
    have passed and divides, for calls too short to time one at a time. The order of
    the contenders is shuffled every round (seeded), so that none always runs right
    after the same neighbour (a large one leaves the caches cold for whoever follows).

    Examples:
      >>> contenders = {"ones": lambda: jnp.ones(3), "zeros": lambda: jnp.zeros(3)}
      >>> medians = fbp.timing.interleaved_medians(contenders, repeats=3, warmup=1)
      >>> sorted(medians), all(t >= 0 for t in medians.values())
      (['ones', 'zeros'], True)
    """
    order = random.Random(0)
    for _ in range(warmup):
        for fn in contenders.values():
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            fn = contenders[name]
            calls, start = 0, time.perf_counter()
            while True:
                jax.block_until_ready(fn())
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_time:
                    break
            samples[name].append(elapsed / calls)
    return {name: statistics.median(times) for name, times in samples.items()}


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 n x n matmul under `jax.jit` on the default device, the best of
    ``repeats`` calls after one to compile: the machine's speed, reported beside absolute
    times (machines of one kind differ by up to 8x in it).

    Examples:
      >>> fbp.timing.gemm_rate(64, repeats=1) > 0
      True
    """
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine() -> dict:
    """What a result was measured on, to print beside it: the CPU's model, the cores, the
    platform, jax's version, the backend and its first device.

    Examples:
      >>> sorted(fbp.timing.machine())
      ['backend', 'cores', 'cpu', 'device', 'jax', 'platform']
    """
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = (
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
            model = next(names, model)
    except OSError:  # not Linux: the platform's own name
        pass
    return dict(
        cpu=model,
        cores=os.cpu_count(),
        platform=platform.platform(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
    )


def published_command(script: str, argv: Sequence[str]) -> str:
    """``python SCRIPT ARGS`` as a result file shows it: the data directory written
    ``$MNIST``, never this machine's path.

    Examples:
      >>> fbp.timing.published_command("scripts/x.py", ["--data-dir", "/data/mnist", "-q"])
      'python scripts/x.py --data-dir $MNIST -q'
    """
    shown = []
    for i, arg in enumerate(argv):
        if arg.startswith("--data-dir="):
            arg = "--data-dir=$MNIST"
        elif i and argv[i - 1] == "--data-dir":
            arg = "$MNIST"
        shown.append(arg)
    return " ".join(["python", script, *shown])
