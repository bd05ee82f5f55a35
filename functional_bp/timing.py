"""Side-by-side timing: contenders interleaved, medians after warm-up.

The machines this runs on are shared and noisy, so comparisons are ratios of medians
measured in the same run, each contender's calls interleaved with the others'.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import jax

__all__ = ["interleaved_medians"]


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
