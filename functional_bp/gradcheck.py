"""Checking `grad` against `jax.grad` and against finite differences (chapter 10 eq 78)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from functional_bp import core
from functional_bp._validation import check_int, check_number
from functional_bp.network import Network, jit_with_net
from functional_bp.params import Layer, Params

Array = jax.Array

__all__ = ["GradCheck", "LeafCheck", "check_gradients", "tolerances"]

# (manual vs jax.grad, manual vs finite differences) relative tolerances per dtype.
_TOLERANCES = {np.dtype(np.float64): (1e-10, 1e-6), np.dtype(np.float32): (1e-4, 1e-2)}


def tolerances(dtype) -> tuple[float, float]:
    """The relative tolerances (vs jax.grad, vs finite differences) used for ``dtype``.

    Examples:
      >>> fbp.gradcheck.tolerances(np.float64)
      (1e-10, 1e-06)
    """
    dtype = np.dtype(dtype)
    if dtype in _TOLERANCES:
        return _TOLERANCES[dtype]
    eps = float(jnp.finfo(dtype).eps)
    return 100 * eps, 10 * eps ** (1 / 3)


class LeafCheck(NamedTuple):
    """One row of the table: one leaf (w or b) of one layer.

    Relative errors are normwise: max |manual - reference| / max |reference| over the
    leaf, which stays meaningful where single entries are zero.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 2], dtype=jnp.float64)
      >>> row = check_gradients(params, jnp.ones((4, 3)), jnp.zeros((4, 2))).rows[0]
      >>> row.layer, row.leaf, row.shape, row.ok
      (1, 'w', (2, 3), True)
    """

    layer: int
    leaf: str
    shape: tuple
    autodiff_abs: float
    autodiff_rel: float
    fd_abs: float
    fd_rel: float
    fd_entries: int
    ok: bool


@dataclasses.dataclass(frozen=True)
class GradCheck:
    """The result of `check_gradients`: ``.ok``, ``.rows``, and a table when printed.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2], dtype=jnp.float64)
      >>> result = check_gradients(params, jnp.ones((5, 3)), jnp.zeros((5, 2)))
      >>> result.ok, len(result.rows), str(result).splitlines()[-1]
      (True, 4, 'all ok')
    """

    rows: tuple[LeafCheck, ...]
    dtype: str
    rtol_autodiff: float
    rtol_fd: float
    fd_step: float
    loss: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def max_autodiff_rel(self) -> float:
        return max(row.autodiff_rel for row in self.rows)

    @property
    def max_fd_rel(self) -> float:
        return max(row.fd_rel for row in self.rows)

    def __str__(self) -> str:
        head = (
            f"{'layer':>5} {'leaf':>4} {'shape':>12}  {'vs jax.grad abs':>15} {'rel':>9}"
            f"  {'vs finite diff abs':>18} {'rel':>9} {'entries':>7}  result"
        )
        lines = [
            f"gradient check ({self.dtype}, loss {self.loss:.6g}): manual backprop vs "
            f"jax.grad (rtol {self.rtol_autodiff:g}) and vs central differences, "
            f"step {self.fd_step:.2g} (rtol {self.rtol_fd:g})",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            lines.append(
                f"{r.layer:>5} {r.leaf:>4} {str(r.shape):>12}  {r.autodiff_abs:>15.2e} "
                f"{r.autodiff_rel:>9.2e}  {r.fd_abs:>18.2e} {r.fd_rel:>9.2e} "
                f"{r.fd_entries:>7}  {'ok' if r.ok else 'FAIL'}"
            )
        lines.append("all ok" if self.ok else "FAILED")
        return "\n".join(lines)


@jit_with_net
def _check(net, params, xs, ys, flat_indices, step):
    """Manual grad, jax.grad, and central differences at ``flat_indices`` of the ravelled
    params, in one compiled program."""

    def loss_fn(p):
        return core.mean_cost(net, p, xs, ys)

    theta, unravel = ravel_pytree(params)

    def central_difference(i):
        h = step * jnp.maximum(1.0, jnp.abs(theta[i]))
        up = loss_fn(unravel(theta.at[i].add(h)))
        down = loss_fn(unravel(theta.at[i].add(-h)))
        return (up - down) / (2 * h)

    fd = jax.lax.map(central_difference, flat_indices)
    value, manual = core.mean_value_and_grad(net, params, xs, ys)
    return manual, jax.grad(loss_fn)(params), fd, value


def check_gradients(
    params: Params,
    xs: Array,
    ys: Array,
    *,
    net: Network = Network(),
    seed: int = 0,
    fd_entries: int = 16,
    fd_step: Optional[float] = None,
) -> GradCheck:
    r"""Compares the hand-written `grad` with ``jax.grad(loss)`` and finite differences.

    Finite differences are chapter 10's eq 78, dC/dw ≈ ΔC/Δw, taken centrally:
    (C(w + h) - C(w - h)) / 2h with h = step * max(1, |w|), on ``fd_entries`` random
    entries of every leaf (all entries of smaller leaves):

    \[ \frac{\partial C}{\partial w} \approx \frac{\Delta C}{\Delta w}
    = \frac{C(w + h) - C(w - h)}{2h}. \]

    A leaf passes when its error against jax.grad is at most ``rtol_autodiff`` times its
    largest entry, and its error against finite differences at most ``rtol_fd`` times
    that plus the finite differences' own rounding error, 10 eps |C| / h.

    Args:
      params: a list of `Layer`.
      xs: shape (batch, n_in).
      ys: shape (batch, n_out).
      net: the `Network`.
      seed: picks the entries checked by finite differences.
      fd_entries: entries per leaf checked by finite differences.
      fd_step: the relative step h; defaults to eps ** (1/3) of the dtype.

    Returns:
      A `GradCheck`; ``str()`` of it is a table, ``.ok`` says whether every leaf passed.

    Examples:
      >>> params = init_mlp(jax.random.key(0), [3, 4, 2], dtype=jnp.float64)
      >>> check_gradients(params, jnp.ones((5, 3)), jnp.zeros((5, 2))).ok
      True
    """
    core.check(net, params, xs, ys, layered=True)
    fd_entries = check_int(fd_entries, "fd_entries")
    check_int(seed, "seed", minimum=0)
    check_number(fd_step, "fd_step", minimum=0, inclusive=False, optional=True)
    params = list(params)
    dtype = np.dtype(params[0].w.dtype)
    rtol_ad, rtol_fd = tolerances(dtype)
    eps = float(jnp.finfo(dtype).eps)
    step = eps ** (1 / 3) if fd_step is None else fd_step

    # Entries checked by finite differences: per leaf, then as indices into the
    # ravelled params (ravel_pytree orders leaves as jax.tree.leaves does).
    rng = np.random.default_rng(seed)
    sizes = [int(np.size(value)) for value in jax.tree.leaves(params)]
    indices = [
        np.arange(size)
        if size <= fd_entries
        else np.sort(rng.choice(size, fd_entries, replace=False))
        for size in sizes
    ]
    offsets = np.cumsum([0] + sizes)[:-1]
    flat_indices = np.concatenate([i + o for i, o in zip(indices, offsets)])
    manual, autodiff, fd, loss_value = _check(net, params, xs, ys, flat_indices, step)
    fd = np.split(np.asarray(fd), np.cumsum([len(i) for i in indices])[:-1])
    loss_value = float(loss_value)
    fd_noise = 10 * eps * max(abs(loss_value), 1.0) / step

    rows = []
    for layer in range(len(params)):
        for leaf, name in enumerate(Layer._fields):
            m = np.asarray(manual[layer][leaf])
            r = np.asarray(autodiff[layer][leaf])
            scale = max(float(np.max(np.abs(r))), np.finfo(dtype).tiny)
            ad_abs = float(np.max(np.abs(m - r)))
            entries = indices[2 * layer + leaf]
            fd_abs = float(np.max(np.abs(m.reshape(-1)[entries] - fd[2 * layer + leaf])))
            ok = ad_abs <= rtol_ad * scale and fd_abs <= rtol_fd * scale + fd_noise
            rows.append(
                LeafCheck(
                    layer + 1,
                    name,
                    m.shape,
                    ad_abs,
                    ad_abs / scale,
                    fd_abs,
                    fd_abs / scale,
                    len(entries),
                    bool(ok),
                )
            )
    return GradCheck(tuple(rows), str(dtype), rtol_ad, rtol_fd, step, loss_value)
